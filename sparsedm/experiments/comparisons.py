"""Paired comparisons besides "each configuration against Dense" (aggregate.py computes that one):

- dynamic against static: each RigL-DM or MagRan-DM row against Static-DM at the same S;
- prune rates: each dynamic row against the same method and S at the largest p the sweep has for them;
- two sweeps (`sparsedm compare A B`): each configuration of B against the same configuration of A (for
  example the same grid trained 4x longer), and its gap to Dense in B against its gap in A, seed by seed:
  [FID_B(c, s) - FID_B(Dense, s)] - [FID_A(c, s) - FID_A(Dense, s)], a difference of differences.

All pair by training seed through paired.paired_difference: a negative mean is the lower (better) FID, and
the verdict reads "the row is better than / indistinguishable from / worse than what it is compared with".
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import (
    PROTOCOL,
    Row,
    aggregate,
    common_protocol,
    provenance_note,
    read_evaluated_runs,
)
from sparsedm.experiments.paired import CONFIDENCE, PairedDifference, paired_difference
from sparsedm.sparse.methods import dense_method, get_method, static_method

OTHERS_NOTE = (
    "Against: each dynamic configuration paired by seed with Static-DM at the same S, and with the same method and "
    "S at the largest p of the sweep; ΔFID is its FID minus theirs, with the same interval and verdict words.\n"
)


@dataclass
class Comparison:
    row: Row  # the configuration compared
    against: str  # what it is compared with, in words
    result: PairedDifference


DENSE_KEY = (dense_method().name, None, None)


def _key(row: Row) -> Tuple:
    return row.method, row.sparsity, row.prune_rate


def _label(row: Row) -> str:
    return get_method(row.method).display_name + (f", S = {row.sparsity:g}" if row.sparsity is not None else "")


def versus_static(rows: List[Row]) -> List[Comparison]:
    """Each dynamic configuration against Static-DM at the same S (none where the sweep has no such run)."""
    static = {row.sparsity: row for row in rows if row.method == static_method().name}
    return [
        Comparison(
            row, _label(static[row.sparsity]), paired_difference(row.fid_by_seed, static[row.sparsity].fid_by_seed)
        )
        for row in rows
        if get_method(row.method).dynamic and row.sparsity in static
    ]


def versus_largest_prune_rate(rows: List[Row]) -> List[Comparison]:
    """Each dynamic configuration against the same method and S at the largest p of the sweep for them."""
    largest: Dict[Tuple, Row] = {}
    for row in rows:
        if get_method(row.method).dynamic:
            best = largest.get((row.method, row.sparsity))
            if best is None or row.prune_rate > best.prune_rate:
                largest[row.method, row.sparsity] = row
    return [
        Comparison(row, f"p = {base.prune_rate:g}", paired_difference(row.fid_by_seed, base.fid_by_seed))
        for row in rows
        if get_method(row.method).dynamic
        for base in [largest[row.method, row.sparsity]]
        if base is not row
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
    in_a = {_key(row): row for row in rows_a}
    dense_a = in_a.get(DENSE_KEY)
    dense_b = next((row for row in rows_b if _key(row) == DENSE_KEY), None)
    changes = []
    for row in rows_b:
        before = in_a.get(_key(row))
        if before is None:
            continue
        gap_change = None
        if row is not dense_b and dense_a is not None and dense_b is not None:
            gap_change = paired_difference(_gaps(row, dense_b), _gaps(before, dense_a))
        changes.append(SweepChange(row, before, paired_difference(row.fid_by_seed, before.fid_by_seed), gap_change))
    return changes


def _signed(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:+.2f}"


def paired_cells(result: PairedDifference) -> str:
    delta = _signed(result.mean)
    interval = "–" if result.ci_low is None else f"[{result.ci_low:+.2f}, {result.ci_high:+.2f}]"
    return f"{result.n} | {delta} | {interval} | {result.verdict}"


def config_cells(method: str, sparsity: Optional[float], prune_rate: Optional[float]) -> str:
    """The method, S and p cells of a markdown row ("–" where a method has none)."""
    sparsity_cell = "–" if sparsity is None else f"{sparsity:g}"
    prune_rate_cell = "–" if prune_rate is None else f"{prune_rate:g}"
    return f"{get_method(method).display_name} | {sparsity_cell} | {prune_rate_cell}"


def _config_cells(row: Row) -> str:
    return config_cells(row.method, row.sparsity, row.prune_rate)


def table_lines(header: List[str], lines: List[str]) -> List[str]:
    """A markdown table: the header row, its rule, then `lines` (each already "| ... |")."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + lines


def comparison_table(comparisons: List[Comparison]) -> str:
    """Markdown: one line per comparison; empty without any."""
    if not comparisons:
        return ""
    header = ["Method", "S", "p", "Against", "Paired seeds", "ΔFID", f"{CONFIDENCE:.0%} CI", "Verdict"]
    lines = [f"| {_config_cells(c.row)} | {c.against} | {paired_cells(c.result)} |" for c in comparisons]
    return "\n".join(table_lines(header, lines)) + "\n"


def sweep_change_tables(changes: List[SweepChange]) -> str:
    """Markdown: FID in A and B with the paired change; then the change of each gap to Dense."""
    if not changes:
        return ""
    ci = f"{CONFIDENCE:.0%} CI"
    header = ["Method", "S", "p", "FID A", "FID B", "Paired seeds", "ΔFID (B - A)", ci, "Verdict (B vs A)"]
    lines = [
        f"| {_config_cells(c.row)} | {c.before.fid_mean:.2f} | {c.row.fid_mean:.2f} | {paired_cells(c.change)} |"
        for c in changes
    ]
    tables = table_lines(header, lines)
    gaps = [c for c in changes if c.gap_change is not None]
    if gaps:
        header = ["Method", "S", "p", "Gap to Dense in A", "Gap in B", "Paired seeds", "Change of gap", ci, "Verdict"]
        lines = [
            f"| {_config_cells(c.row)} | {_signed(c.before.delta_mean)} | {_signed(c.row.delta_mean)} "
            f"| {paired_cells(c.gap_change)} |"
            for c in gaps
        ]
        tables += [""] + table_lines(header, lines)
    return "\n".join(tables) + "\n"


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
