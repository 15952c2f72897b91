"""Paired comparisons of a sweep's configurations, by FID and by KID, with Holm-adjusted verdicts:

- the baselines: each configuration against Dense of the same seed, and each sparse one against Small-Dense
  (baselines.py) at the same S and seed: the dense model of its size (aggregate.py computes the FID pairs);
- dynamic against static: each RigL-DM or MagRan-DM row against Static-DM at the same S;
- prune rates: each dynamic row against the same method and S at the largest p the sweep has for them;
- blocks: each block-structured row (`sparse.block_size` b > 1) against the same method, S and p unstructured
  (b = 1): the score the tiles cost;
- two sweeps (`sparsedm compare A B`): each configuration of B against the same configuration of A (for
  example the same grid trained 4x longer), and its gap to Dense in B against its gap in A, seed by seed:
  [FID_B(c, s) - FID_B(Dense, s)] - [FID_A(c, s) - FID_A(Dense, s)], a difference of differences.

All pair by training seed through paired.paired_difference: a negative mean is the lower (better) score, and
the verdict reads "the row is better than / indistinguishable from / worse than what it is compared with".
Each table adjusts its verdicts with Holm (paired.holm) over its family: its comparisons of one score (FID or
KID), and says so under it. A study may name its one primary comparison (`primary_comparison` in its config):
the report prints it first, in a table of its own.
"""

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from sparsedm.config import PRIMARY_COMPARISON
from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import (
    PROTOCOL,
    Row,
    aggregate,
    block_label,
    common_protocol,
    provenance_note,
    read_evaluated_runs,
    row_key,
)
from sparsedm.experiments.baselines import SMALL_DENSE, get_method, is_dense
from sparsedm.experiments.grid import RunSpec
from sparsedm.experiments.paired import CONFIDENCE, PairedDifference, holm, paired_difference
from sparsedm.sparse.methods import dense_method, static_method

OTHERS_NOTE = (
    "Against: each dynamic configuration paired by seed with Static-DM at the same S, and with the same method and "
    "S at the largest p of the sweep; Δ is its score minus theirs, with the same interval and verdict words.\n"
)
BLOCKS_NOTE = (
    "Against unstructured: each block-structured configuration (masks of b x b tiles, sparse.block_size) paired "
    "by seed with the same method, S and p at b = 1; Δ is what the tiles cost (a positive Δ: a worse score).\n"
)
FID, KID = "FID", "KID"


@dataclass
class Comparison:
    row: Row  # the configuration compared
    against: str  # what it is compared with, in words
    result: PairedDifference
    score: str = FID  # FID | KID
    step: Optional[int] = None  # the scored step, in tables of several steps


def by_seed(row: Row, score: str) -> Dict[int, float]:
    return row.fid_by_seed if score == FID else row.kid_by_seed


def versus_baselines(rows: List[Row], step: Optional[int] = None) -> List[Comparison]:
    """Each configuration against Dense, and each sparse one against Small-Dense at its S, by FID, then the same
    by KID where both sides have KIDs."""
    dense = next((row for row in rows if is_dense(row.method)), None)
    small = {row.sparsity: row for row in rows if row.method == SMALL_DENSE.name}
    out = []
    for score in (FID, KID):
        for row in rows:
            for base in (dense, small.get(row.sparsity) if get_method(row.method).sparse else None):
                if base is None or base is row or not by_seed(row, score) or not by_seed(base, score):
                    continue
                result = paired_difference(by_seed(row, score), by_seed(base, score))
                out.append(Comparison(row, get_method(base.method).display_name, result, score, step))
    return out


DENSE_KEY = (dense_method().name, None, None, None)
UNSTRUCTURED = "unstructured"  # what a block-structured row is compared with in versus_unstructured


def _label(row: Row) -> str:
    sparsity = f", S = {row.sparsity:g}" if row.sparsity is not None else ""
    return get_method(row.method).display_name + sparsity + block_label(row.block_size)


def versus_static(rows: List[Row]) -> List[Comparison]:
    """Each dynamic configuration against Static-DM at the same S and block size (none where the sweep has no
    such run)."""
    static = {(row.sparsity, row.block_size): row for row in rows if row.method == static_method().name}
    return [
        Comparison(row, _label(base), paired_difference(by_seed(row, score), by_seed(base, score)), score)
        for score in (FID, KID)
        for row in rows
        if get_method(row.method).dynamic and (row.sparsity, row.block_size) in static
        for base in [static[row.sparsity, row.block_size]]
        if by_seed(row, score) and by_seed(base, score)
    ]


def versus_largest_prune_rate(rows: List[Row]) -> List[Comparison]:
    """Each dynamic configuration against the same method, S and block size at the largest p of the sweep for
    them."""
    largest: Dict[Tuple, Row] = {}
    for row in rows:
        if get_method(row.method).dynamic:
            best = largest.get((row.method, row.sparsity, row.block_size))
            if best is None or row.prune_rate > best.prune_rate:
                largest[row.method, row.sparsity, row.block_size] = row
    return [
        Comparison(row, f"p = {base.prune_rate:g}", paired_difference(by_seed(row, score), by_seed(base, score)), score)
        for score in (FID, KID)
        for row in rows
        if get_method(row.method).dynamic
        for base in [largest[row.method, row.sparsity, row.block_size]]
        if base is not row and by_seed(row, score) and by_seed(base, score)
    ]


def versus_unstructured(rows: List[Row], step: Optional[int] = None) -> List[Comparison]:
    """Each block-structured configuration (b > 1) against the same method, S and p unstructured (b = 1), by
    FID, then by KID where both sides have KIDs."""
    unstructured = {(row.method, row.sparsity, row.prune_rate): row for row in rows if row.block_size == 1}
    return [
        Comparison(row, UNSTRUCTURED, paired_difference(by_seed(row, score), by_seed(base, score)), score, step)
        for score in (FID, KID)
        for row in rows
        if (row.block_size or 1) > 1 and (row.method, row.sparsity, row.prune_rate) in unstructured
        for base in [unstructured[row.method, row.sparsity, row.prune_rate]]
        if by_seed(row, score) and by_seed(base, score)
    ]


@dataclass
class SweepChange:
    row: Row  # the configuration in sweep B
    before: Row  # the same configuration in sweep A
    change: PairedDifference  # FID_B - FID_A, by seed
    # (gap to Dense in B) - (gap in A), by seed; None for Dense itself, or when a sweep has no Dense
    gap_change: Optional[PairedDifference]


def _gaps(row: Row, dense: Row) -> Dict[int, float]:
    return {seed: fid - dense.fid_by_seed[seed] for seed, fid in row.fid_by_seed.items() if seed in dense.fid_by_seed}


def across_sweeps(rows_a: List[Row], rows_b: List[Row]) -> List[SweepChange]:
    """Each configuration present in both sweeps, in B's order."""
    in_a = {row_key(row): row for row in rows_a}
    dense_a = in_a.get(DENSE_KEY)
    dense_b = next((row for row in rows_b if row_key(row) == DENSE_KEY), None)
    changes = []
    for row in rows_b:
        before = in_a.get(row_key(row))
        if before is None:
            continue
        gap_change = None
        if row is not dense_b and dense_a is not None and dense_b is not None:
            gap_change = paired_difference(_gaps(row, dense_b), _gaps(before, dense_a))
        changes.append(SweepChange(row, before, paired_difference(row.fid_by_seed, before.fid_by_seed), gap_change))
    return changes


def _signed(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def score_digits(score: str) -> int:
    """Decimals a score's differences are printed with: FID's are points, KID's hundredths or less."""
    return 2 if score == FID else 4


def paired_cells(result: PairedDifference, score: str = FID) -> str:
    """Paired seeds | Δ | interval | verdict | Holm p | Holm verdict (the last two "–" before `holm`)."""
    digits = score_digits(score)
    delta = _signed(result.mean, digits)
    interval = "–" if result.ci_low is None else f"[{result.ci_low:+.{digits}f}, {result.ci_high:+.{digits}f}]"
    holm_p = "–" if result.holm_p is None else f"{result.holm_p:.3g}"
    return f"{result.n} | {delta} | {interval} | {result.verdict} | {holm_p} | {result.holm_verdict or '–'}"


PAIRED_HEADER = ["Paired seeds", "Δ", f"{CONFIDENCE:.0%} CI", "Verdict", "Holm p", "Holm verdict"]


def with_holm(items: list, result_of=lambda item: item.result, score_of=lambda item: item.score) -> list:
    """The items (comparisons, equal-FLOPs pairs) with their results Holm-adjusted over one family per score."""
    out = list(items)
    for score in (FID, KID):
        family = [i for i, item in enumerate(out) if score_of(item) == score]
        for i, adjusted in zip(family, holm([result_of(out[i]) for i in family])):
            out[i] = replace(out[i], result=adjusted)
    return out


def family_note(items: list, what: str, score_of=lambda item: item.score) -> str:
    """The sentence under a table that names its Holm families."""
    tested = [i for i in items if i.result.p_value is not None]
    counts = [f"{sum(score_of(i) == score for i in tested)} by {score}" for score in (FID, KID)]
    counts = [c for c in counts if not c.startswith("0 ")] or ["none"]
    return (
        f"Holm: verdicts adjusted over this table's family of {what}, one family per score ({', '.join(counts)}; "
        "a comparison with fewer than 2 paired seeds has no p and is not counted).\n"
    )


def config_cells(method: str, sparsity: Optional[float], prune_rate: Optional[float], block_size: Optional[int]) -> str:
    """The method, S and p cells of a markdown row ("–" where a method has none); a block-structured
    configuration's method cell names its tiles ("RigL-DM, 16 x 16 blocks")."""
    sparsity_cell = "–" if sparsity is None else f"{sparsity:g}"
    prune_rate_cell = "–" if prune_rate is None else f"{prune_rate:g}"
    return f"{get_method(method).display_name}{block_label(block_size)} | {sparsity_cell} | {prune_rate_cell}"


def _config_cells(row: Row) -> str:
    return config_cells(*row_key(row))


def table_lines(header: List[str], lines: List[str]) -> List[str]:
    """A markdown table: the header row, its rule, then `lines` (each already "| ... |")."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + lines


def comparison_table(comparisons: List[Comparison], what: str = "comparisons") -> str:
    """Markdown: one line per comparison, Holm-adjusted over the table's family per score, and the note naming
    the families; empty without any."""
    if not comparisons:
        return ""
    comparisons = with_holm(comparisons)
    steps = any(c.step is not None for c in comparisons)
    header = (["Step"] if steps else []) + ["Method", "S", "p", "Against", "Score", *PAIRED_HEADER]
    lines = [
        f"| {f'{c.step} | ' if steps else ''}{_config_cells(c.row)} | {c.against} | {c.score} "
        f"| {paired_cells(c.result, c.score)} |"
        for c in comparisons
    ]
    return "\n".join(table_lines(header, lines)) + "\n\n" + family_note(comparisons, what)


def baselines_family(comparisons: List[Comparison]) -> str:
    """The name of versus_baselines' family: "comparisons with Dense", "... and Small-Dense" where it has those."""
    against = list(dict.fromkeys(c.against for c in comparisons))
    return "comparisons with " + " and ".join(against or [dense_method().display_name])


def primary_table(comparisons: List[Comparison], spec: str) -> str:
    """The study's primary comparison (`primary_comparison` of its config, e.g. "rigl-S0.5-p0.1 vs small-dense")
    by FID and KID, with its unadjusted verdict and the Holm one of the table it also appears in."""
    match = PRIMARY_COMPARISON.match(spec)
    against = get_method(match["against"]).display_name
    chosen = [
        c
        for c in with_holm(comparisons)
        if RunSpec(c.row.method, c.row.sparsity, c.row.prune_rate, 0, c.row.block_size).name
        == f"{match['config']}-seed0"
        and c.against == against
    ]
    heading = f"## Primary comparison: {spec}\n\nNamed in the study's config before its runs.\n\n"
    if not chosen:
        return heading + "No paired runs of it yet.\n"
    header = ["Method", "S", "p", "Against", "Score", *PAIRED_HEADER]
    lines = [
        f"| {_config_cells(c.row)} | {c.against} | {c.score} | {paired_cells(c.result, c.score)} |" for c in chosen
    ]
    return (
        heading
        + "\n".join(table_lines(header, lines))
        + f"\n\nHolm p and verdict: over the family of the {baselines_family(comparisons)} below.\n\n"
    )


def sweep_change_tables(changes: List[SweepChange]) -> str:
    """Markdown: FID in A and B with the paired change; then the change of each gap to Dense."""
    if not changes:
        return ""
    ci, holm_cells = f"{CONFIDENCE:.0%} CI", ["Holm p", "Holm verdict"]
    header = ["Method", "S", "p", "FID A", "FID B", "Paired seeds", "ΔFID (B - A)", ci, "Verdict (B vs A)"]
    changed = holm([c.change for c in changes])
    lines = [
        f"| {_config_cells(c.row)} | {c.before.fid_mean:.2f} | {c.row.fid_mean:.2f} | {paired_cells(result)} |"
        for c, result in zip(changes, changed)
    ]
    tables = table_lines(header + holm_cells, lines)
    gaps = [c for c in changes if c.gap_change is not None]
    if gaps:
        header = ["Method", "S", "p", "Gap to Dense in A", "Gap in B", "Paired seeds", "Change of gap", ci, "Verdict"]
        lines = [
            f"| {_config_cells(c.row)} | {_signed(c.before.delta_mean)} | {_signed(c.row.delta_mean)} "
            f"| {paired_cells(result)} |"
            for c, result in zip(gaps, holm([c.gap_change for c in gaps]))
        ]
        tables += [""] + table_lines(header + holm_cells, lines)
    return "\n".join(tables) + "\n\nHolm: each table's verdicts adjusted over its own rows as one family.\n"


def _sweep_rows(sweep_dir) -> Tuple[List[Row], dict, str]:
    records = read_evaluated_runs(sweep_dir)
    return aggregate(records), common_protocol(records), provenance_note(records)


def compare_sweeps(sweep_a, sweep_b) -> str:
    """`sparsedm compare A B` as markdown: what differs between the two setups, then sweep_change_tables, then
    the commits each sweep's runs came from."""
    rows_a, protocol_a, provenance_a = _sweep_rows(sweep_a)
    rows_b, protocol_b, provenance_b = _sweep_rows(sweep_b)
    changes = across_sweeps(rows_a, rows_b)
    if not changes:
        raise UserError(f"{sweep_a} and {sweep_b} have no configuration (method, S, p) in common; nothing to compare")
    differences = [
        f"{key} {protocol_a[key]!r} -> {protocol_b[key]!r}" for key in PROTOCOL if protocol_a[key] != protocol_b[key]
    ]
    return (
        f"A = {sweep_a}, B = {sweep_b}; B differs from A in: {'; '.join(differences) or 'nothing of the protocol'}.\n\n"
        + sweep_change_tables(changes)
        + f"\nEach configuration of B against the same configuration of A, paired by training seed, with a "
        f"{CONFIDENCE:.0%} Student-t interval (n - 1 degrees of freedom); lower FID is better. The gap is FID minus "
        "Dense's FID of the same seed and sweep; its change is the gap in B minus the gap in A, seed by seed, so "
        '"better" there means the configuration came closer to Dense (or further ahead of it).\n'
        + f"\nA: {provenance_a}B: {provenance_b}"
    )
