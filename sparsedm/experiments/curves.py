"""Learning curves of a sweep whose runs were scored at several steps (`train.keep_steps`, RUN/eval/):

- per step, FID mean ± std, the exploration rate (share of the sparse weights ever active by then) and each
  configuration paired by seed with Dense at the same step;
- equal training FLOPs: each sparse point paired, seed by seed, with the Dense points of the same seed on either
  side of its cumulative training FLOPs: the last at or below its own (within FLOPS_TOLERANCE) and the first
  above. No interpolation between Dense's scored steps; the table states what each Dense point spent. Ahead of
  a Dense point that spent more is ahead per FLOP; behind one that spent less is behind per FLOP; anything else
  is between Dense's scored points, and says nothing per FLOP;
- memorisation: FID against the training split and the near-copy shares (eval/memorisation.py), with the
  held-out split's share as the baseline.

Records are the step files' dicts with the run's folder name as `run`; aggregate.aggregate makes the rows.
"""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sparsedm.experiments.aggregate import RUNS, Row, aggregate, group_key, human
from sparsedm.experiments.comparisons import config_cells, paired_cells, table_lines
from sparsedm.experiments.paired import BETTER, CONFIDENCE, WORSE, PairedDifference, paired_difference
from sparsedm.runs.files import read_json
from sparsedm.runs.run_dir import EVAL_FIELDS, EVAL_FIX, EVAL_STEPS
from sparsedm.sparse.methods import get_method, method_order

# relative: a Dense point that spent at most 0.1% more counts as equal. A sparse model's count is not exactly a
# fraction of Dense's (ERK rounds each tensor's density; biases and norms stay dense): MagRan-DM at S = 0.5 spent
# 99.998% of Dense at half its steps in docs/curves.md, and a strict rule paired it with Dense at a quarter.
FLOPS_TOLERANCE = 1e-3


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
    header = ["Step", "Method", "S", "p", "FID ↓", "Seeds", "Explored", "Paired seeds", "ΔFID vs Dense"]
    header.append(f"{CONFIDENCE:.0%} CI")
    lines = []
    for step, rows in by_step.items():
        for row in rows:
            fid = f"{row.fid_mean:.2f}" + (f" ± {row.fid_std:.2f}" if row.fid_std is not None else "")
            paired = "– | – | – | –"
            if get_method(row.method).sparse and row.delta_n is not None:
                result = PairedDifference(row.delta_n, row.delta_mean, row.delta_ci_low, row.delta_ci_high, row.verdict)
                paired = paired_cells(result)
            config = config_cells(row.method, row.sparsity, row.prune_rate)
            explored = (
                "–"
                if row.exploration_rate is None or not get_method(row.method).sparse
                else f"{row.exploration_rate:.1%}"
            )
            lines.append(f"| {step} | {config} | {fid} | {row.seeds} | {explored} | {paired} |")
    return "\n".join(table_lines([*header, "Verdict"], lines)) + "\n"


@dataclass
class EqualFlopsPair:
    key: tuple  # (method, S, p) of the sparse configuration
    step: int  # its scored step
    flops: float  # its cumulative training FLOPs at that step (mean over seeds)
    dense_step: int  # the Dense step paired with it
    dense_flops: float
    result: PairedDifference  # FID(sparse, step) - FID(Dense, dense_step), by seed

    @property
    def per_flop(self) -> str:
        """What the pair says per training FLOP: sparse ahead of a Dense point that spent as much or more, Dense
        ahead of the sparse point while spending as much or less; else nothing ("–")."""
        if self.result.verdict == BETTER and self.dense_flops >= self.flops * (1 - FLOPS_TOLERANCE):
            return "sparse ahead"
        if self.result.verdict == WORSE and self.dense_flops <= self.flops * (1 + FLOPS_TOLERANCE):
            return "Dense ahead"
        return "–"


def _dense_points(records: List[dict]) -> Dict[int, List[Tuple[float, int, float]]]:
    """Dense's scored points by seed: (cumulative training FLOPs, step, FID), by FLOPs."""
    points = defaultdict(list)
    for record in records:
        if not get_method(record["method"]).sparse:
            points[record["seed"]].append((record["flops_train_total"], record["step"], record["fid"]))
    return {seed: sorted(found) for seed, found in points.items()}


def _partners(points: List[Tuple[float, int, float]], flops: float) -> Tuple[Optional[tuple], Optional[tuple]]:
    """The points on either side of `flops`: the last at or below it (within FLOPS_TOLERANCE) and the first above;
    None where there is none."""
    below = [point for point in points if point[0] <= flops * (1 + FLOPS_TOLERANCE)]
    above = [point for point in points if point[0] > flops * (1 + FLOPS_TOLERANCE)]
    return (below[-1] if below else None), (above[0] if above else None)


def equal_flops_pairs(records: List[dict]) -> List[EqualFlopsPair]:
    """Each sparse (configuration, step) against Dense at the nearest cumulative training FLOPs at or below its
    own and at the nearest above, paired by seed; a side without a Dense point is left out."""
    dense = _dense_points(records)
    groups = defaultdict(list)
    for record in records:
        if get_method(record["method"]).sparse:
            groups[group_key(record), record["step"]].append(record)
    pairs = []
    for (key, step), runs in groups.items():
        flops = sum(run["flops_train_total"] for run in runs) / len(runs)
        for side in (0, 1):  # 0: Dense spent as much or less; 1: Dense spent more
            fids, dense_fids, partners = {}, {}, set()
            for run in runs:
                partner = _partners(dense.get(run["seed"], []), run["flops_train_total"])[side]
                if partner is not None:
                    fids[run["seed"]], dense_fids[run["seed"]] = run["fid"], partner[2]
                    partners.add(partner[:2])
            if not partners:
                continue
            # Dense's FLOPs per step are the same for every seed, so the seeds share one partner step
            dense_flops, dense_step = max(partners) if side == 0 else min(partners)
            result = paired_difference(fids, dense_fids)
            pairs.append(EqualFlopsPair(key, step, flops, dense_step, dense_flops, result))
    return sorted(pairs, key=_pair_order)


def _pair_order(pair: EqualFlopsPair) -> tuple:
    return method_order(pair.key[0]), pair.key[1] or 0.0, pair.key[2] or 0.0, pair.step, pair.dense_flops


def equal_flops_table(pairs: List[EqualFlopsPair]) -> str:
    if not pairs:
        return ""
    header = ["Method", "S", "p", "Step", "Training FLOPs", "Dense step", "Dense FLOPs (share)", "Paired seeds"]
    header += ["ΔFID vs Dense", f"{CONFIDENCE:.0%} CI", "Verdict", "Per FLOP"]
    lines = []
    for pair in pairs:
        lines.append(
            f"| {config_cells(*pair.key)} | {pair.step} | {human(pair.flops)} | {pair.dense_step} "
            f"| {human(pair.dense_flops)} ({pair.dense_flops / pair.flops:.0%}) | {paired_cells(pair.result)} "
            f"| {pair.per_flop} |"
        )
    return "\n".join(table_lines(header, lines)) + "\n"


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
        "Near copies (Inception)",
        "Near copies (pixels)",
    ]
    lines = []
    order = sorted(groups, key=lambda k: (k[0], method_order(k[1][0]), k[1][1] or 0.0, k[1][2] or 0.0))
    for step, (method, sparsity, prune_rate) in order:
        runs = groups[step, (method, sparsity, prune_rate)]
        lines.append(
            f"| {step} | {config_cells(method, sparsity, prune_rate)} | {_mean([r['fid'] for r in runs]):.2f} | {_mean([r['fid_train'] for r in runs]):.2f} "
            f"| {_mean([r['near_copy'] for r in runs]):.1%} | {_mean([r['near_copy_pixels'] for r in runs]):.1%} |"
        )
    baseline = scored[0]
    note = (
        f"\nBaseline: {baseline['near_copy_heldout']:.1%} (Inception) and {baseline['near_copy_heldout_pixels']:.1%} "
        f"(pixels) of the held-out items are near copies of a training item by the same rule: "
        f"{baseline['near_copy_rule']}. Training split: {baseline['train_size']} items.\n"
    )
    return "\n".join(table_lines(header, lines)) + "\n" + note
