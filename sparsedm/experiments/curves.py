"""Learning curves of a sweep whose runs were scored at several steps (`train.keep_steps`, RUN/eval/):

- per step, FID and KID mean ± std, the exploration rate (share of the sparse weights ever active by then),
  then each configuration paired by seed with Dense, and each sparse one with Small-Dense of its S, at the same
  step (comparisons.versus_baselines; Holm over the whole table, one family per score), and each
  block-structured one with the same configuration unstructured (comparisons.versus_unstructured; its own table);
- equal training FLOPs, and equal training CPU seconds where the runs recorded them (train/step_clock.py): each
  sparse point paired, seed by seed, with the points of the same seed of a dense baseline (Dense; Small-Dense
  of the same S) on either side of its cumulative cost: the last at or below its own (within the axis's
  tolerance) and the first above. No interpolation between the baseline's scored steps; the table states what
  each baseline point spent. Ahead of a baseline point that spent more is ahead per FLOP (per CPU-second);
  behind one that spent less is behind; anything else is between the baseline's scored points, and says
  nothing per unit of cost;
- memorisation: FID against the training split and the near-copy shares (eval/memorisation.py), with the
  held-out split's share as the baseline.

Records are the step files' dicts with the run's folder name as `run`; aggregate.aggregate makes the rows.
"""

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sparsedm.experiments.aggregate import (
    RUNS,
    Row,
    aggregate,
    config_order,
    fid_cell,
    group_key,
    human,
    mean_std,
    row_key,
)
from sparsedm.experiments.baselines import SMALL_DENSE, get_method, is_dense
from sparsedm.experiments.comparisons import (
    FID,
    KID,
    PAIRED_HEADER,
    comparison_table,
    config_cells,
    family_note,
    paired_cells,
    table_lines,
    versus_baselines,
    versus_unstructured,
    with_holm,
)
from sparsedm.experiments.paired import BETTER, WORSE, PairedDifference, paired_difference
from sparsedm.runs.files import read_json
from sparsedm.runs.run_dir import EVAL_FIELDS, EVAL_FIX, EVAL_STEPS
from sparsedm.sparse.methods import dense_method


def read_curve_records(sweep_dir) -> List[dict]:
    """Every RUN/eval/step_*.json of the sweep, with its run's folder name as `run`."""
    records = []
    for path in sorted((Path(sweep_dir) / RUNS).glob(f"*/{EVAL_STEPS}/step_*.json")):
        record = read_json(path, EVAL_FIX, {**EVAL_FIELDS, "step": int})
        records.append({**record, "run": path.parent.parent.name})
    return records


def has_curves(records: List[dict]) -> bool:
    return len({record["step"] for record in records}) > 1


def rows_by_step(records: List[dict]) -> Dict[int, List[Row]]:
    """aggregate() of the records of each step: FID mean ± std and the pairing with Dense at that step."""
    steps = defaultdict(list)
    for record in records:
        steps[record["step"]].append(record)
    return {step: aggregate(steps[step]) for step in sorted(steps)}


def per_step_table(by_step: Dict[int, List[Row]]) -> str:
    """FID and KID mean ± std per configuration and step, then the paired comparisons with the baselines."""
    lines = []
    for step, rows in by_step.items():
        for row in rows:
            explored = (
                "–"
                if row.exploration_rate is None or not get_method(row.method).sparse
                else f"{row.exploration_rate:.1%}"
            )
            lines.append(
                f"| {step} | {config_cells(*row_key(row))} "
                f"| {fid_cell(row)} | {mean_std(row.kid_mean, row.kid_std, 4)} | {row.seeds} "
                f"| {explored} |"
            )
    header = ["Step", "Method", "S", "p", "FID ↓", "KID ↓", "Seeds", "Explored"]
    comparisons = [c for step, rows in by_step.items() for c in versus_baselines(rows, step)]
    blocks = [c for step, rows in by_step.items() for c in versus_unstructured(rows, step)]
    table = (
        "\n".join(table_lines(header, lines))
        + "\n\nEach configuration paired by seed with Dense, and each sparse one with Small-Dense of its S, at the "
        "same step:\n\n" + (comparison_table(comparisons, "per-step comparisons (every step)") or "No pair.\n")
    )
    if not blocks:
        return table
    return (
        table
        + "\nEach block-structured configuration paired by seed with the same method, S and p unstructured, at the "
        "same step:\n\n" + comparison_table(blocks, "per-step comparisons of blocks against unstructured")
    )


@dataclass(frozen=True)
class CostAxis:
    """What a run spends, as the step files record it up to the step scored: the axis of the equal-cost pairs."""

    key: str  # the step file's cumulative cost
    name: str  # the table's column of the sparse point's cost
    short: str  # its plural in "Its <short> (share)" and "equal-<short> pairs"
    unit: str  # "per <unit>" in the verdict column
    tolerance: float  # relative: a baseline point that spent at most this much more counts as equal


# relative: a Dense point that spent at most 0.1% more counts as equal. A sparse model's count is not exactly a
# fraction of Dense's (ERK rounds each tensor's density; biases and norms stay dense): MagRan-DM at S = 0.5 spent
# 99.998% of Dense at half its steps in docs/curves.md, and a strict rule paired it with Dense at a quarter.
FLOPS_TOLERANCE = 1e-3
FLOPS = CostAxis("flops_train_total", "Training FLOPs", "FLOPs", "FLOP", FLOPS_TOLERANCE)
# measured, not counted: no rounding to forgive, so a baseline point spent as much only if it spent at least as much
SECONDS = CostAxis("train_cpu_s", "Training CPU s", "CPU-seconds", "CPU-second", 0.0)


@dataclass
class EqualCostPair:
    key: tuple  # (method, S, p, b) of the sparse configuration
    step: int  # its scored step
    cost: float  # its cumulative training cost at that step (mean over the paired seeds)
    against: str  # the baseline's display name: Dense, Small-Dense
    base_step: int  # the baseline's step paired with it
    base_cost: float  # the baseline's cost at that step (mean over the paired seeds)
    result: PairedDifference  # score(sparse, step) - score(baseline, base_step), by seed
    score: str = FID
    axis: CostAxis = FLOPS

    @property
    def per_cost(self) -> str:
        """What the pair says per unit of cost: sparse ahead of a baseline point that spent as much or more, the
        baseline ahead of the sparse point while spending as much or less; else nothing ("–"). From the Holm
        verdict once the table has adjusted it."""
        verdict = self.result.holm_verdict or self.result.verdict
        if verdict == BETTER and self.base_cost >= self.cost * (1 - self.axis.tolerance):
            return "sparse ahead"
        if verdict == WORSE and self.base_cost <= self.cost * (1 + self.axis.tolerance):
            return f"{self.against} ahead"
        return "–"

    @property
    def per_cost_unadjusted(self) -> str:
        return replace(self, result=replace(self.result, holm_verdict=None)).per_cost


def has_cost(records: List[dict], axis: CostAxis) -> bool:
    """Every scored point records the axis's cost (runs trained before seconds were recorded have none)."""
    return bool(records) and all(record.get(axis.key) is not None for record in records)


def _baseline_points(records: List[dict], score: str, axis: CostAxis) -> Dict[tuple, List[Tuple[float, int, float]]]:
    """The baselines' scored points by (configuration, S, seed): (cumulative cost, step, score), by cost. Dense's
    S is None; Small-Dense's the S it matches."""
    points = defaultdict(list)
    for record in records:
        method, sparsity, *_ = group_key(record)
        if (is_dense(method) or method == SMALL_DENSE.name) and record.get(score.lower()) is not None:
            points[method, sparsity, record["seed"]].append((record[axis.key], record["step"], record[score.lower()]))
    return {key: sorted(found) for key, found in points.items()}


def _partners(
    points: List[Tuple[float, int, float]], cost: float, tolerance: float
) -> Tuple[Optional[tuple], Optional[tuple]]:
    """The points on either side of `cost`: the last at or below it (within `tolerance`) and the first above;
    None where there is none."""
    below = [point for point in points if point[0] <= cost * (1 + tolerance)]
    above = [point for point in points if point[0] > cost * (1 + tolerance)]
    return (below[-1] if below else None), (above[0] if above else None)


def equal_cost_pairs(records: List[dict], axis: CostAxis = FLOPS) -> List[EqualCostPair]:
    """Each sparse (configuration, step) against Dense, and against Small-Dense of its S, at the nearest
    cumulative cost at or below its own and at the nearest above, paired by seed, by FID and by KID; a side
    without a baseline point is left out. FLOPs per step are the same for every seed, so the seeds share one
    partner step; measured seconds are not, and seeds whose partners are at different steps make one pair per
    step."""
    groups = defaultdict(list)
    for record in records:
        if get_method(record["method"]).sparse:
            groups[group_key(record), record["step"]].append(record)
    pairs = []
    for score in (FID, KID):
        baselines = _baseline_points(records, score, axis)
        for (key, step), runs in groups.items():
            runs = [run for run in runs if run.get(score.lower()) is not None]
            for base in ((dense_method().name, None), (SMALL_DENSE.name, key[1])):
                for side in (0, 1):  # 0: the baseline spent as much or less; 1: it spent more
                    by_partner_step = defaultdict(list)  # the baseline's step -> [(run, its partner point)]
                    for run in runs:
                        points = baselines.get((*base, run["seed"]), [])
                        partner = _partners(points, run[axis.key], axis.tolerance)[side]
                        if partner is not None:
                            by_partner_step[partner[1]].append((run, partner))
                    for base_step, found in sorted(by_partner_step.items()):
                        result = paired_difference(
                            {run["seed"]: run[score.lower()] for run, _ in found},
                            {run["seed"]: partner[2] for run, partner in found},
                        )
                        pairs.append(
                            EqualCostPair(
                                key,
                                step,
                                _mean([run[axis.key] for run, _ in found]),
                                get_method(base[0]).display_name,
                                base_step,
                                _mean([partner[0] for _, partner in found]),
                                result,
                                score,
                                axis,
                            )
                        )
    return sorted(pairs, key=_pair_order)


def _pair_order(pair: EqualCostPair) -> tuple:
    return pair.score, *config_order(pair.key), pair.step, pair.against, pair.base_cost


def _cost_cell(axis: CostAxis, cost: float) -> str:
    return human(cost) if axis is FLOPS else f"{cost:,.1f}"


def equal_cost_table(pairs: List[EqualCostPair], axis: CostAxis = FLOPS) -> str:
    """Markdown, Holm-adjusted over the table (one family per score), with the per-cost reading of both the
    unadjusted and the adjusted verdict."""
    if not pairs:
        return ""
    pairs = with_holm(pairs)
    header = ["Method", "S", "p", "Step", axis.name, "Against", "Its step", f"Its {axis.short} (share)", "Score"]
    header += [*PAIRED_HEADER, f"Per {axis.unit}", f"Per {axis.unit} (Holm)"]
    lines = []
    for pair in pairs:
        lines.append(
            f"| {config_cells(*pair.key)} | {pair.step} | {_cost_cell(axis, pair.cost)} | {pair.against} "
            f"| {pair.base_step} | {_cost_cell(axis, pair.base_cost)} ({pair.base_cost / pair.cost:.0%}) "
            f"| {pair.score} | {paired_cells(pair.result, pair.score)} | {pair.per_cost_unadjusted} | {pair.per_cost} |"
        )
    return "\n".join(table_lines(header, lines)) + "\n\n" + family_note(pairs, f"equal-{axis.short} pairs")


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def memorisation_table(records: List[dict]) -> str:
    """Per configuration and step: FID against held-out and training data, near-copy shares (means over seeds);
    empty when no record has them."""
    scored = [record for record in records if "near_copy" in record]
    if not scored:
        return ""
    groups = defaultdict(list)
    for record in scored:
        groups[record["step"], group_key(record)].append(record)
    header = [
        "Step",
        "Method",
        "S",
        "p",
        "FID held-out",
        "FID train",
        "KID held-out",
        "KID train",
        "Near copies (Inception)",
        "Near copies (pixels)",
    ]
    lines = []
    for step, key in sorted(groups, key=lambda k: (k[0], *config_order(k[1]))):
        runs = groups[step, key]
        # KID where every run has it (the same train and held-out references, without FID's size-dependent bias)
        kids = [
            "–" if any(r.get(key) is None for r in runs) else f"{_mean([r[key] for r in runs]):.4f}"
            for key in ("kid", "kid_train")
        ]
        lines.append(
            f"| {step} | {config_cells(*key)} | {_mean([r['fid'] for r in runs]):.2f} "
            f"| {_mean([r['fid_train'] for r in runs]):.2f} | {kids[0]} | {kids[1]} "
            f"| {_mean([r['near_copy'] for r in runs]):.1%} | {_mean([r['near_copy_pixels'] for r in runs]):.1%} |"
        )
    baseline = scored[0]
    note = (
        f"\nBaseline: {baseline['near_copy_heldout']:.1%} (Inception) and {baseline['near_copy_heldout_pixels']:.1%} "
        f"(pixels) of the held-out items are near copies of a training item by the same rule: "
        f"{baseline['near_copy_rule']}. Training split: {baseline['train_size']} items.\n"
    )
    if baseline.get("near_copy_control") is not None:
        note += (
            f"\nPositive control: of {baseline['near_copy_control_size']} near copies by construction "
            f"({baseline['near_copy_control_kind']}), the test detects {baseline['near_copy_control']:.1%} in "
            f"Inception features and {baseline['near_copy_control_pixels']:.1%} in pixels; a space that misses them "
            "cannot show a model's copies either.\n"
        )
    return "\n".join(table_lines(header, lines)) + "\n" + note
