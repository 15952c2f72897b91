"""The validation losses of a sweep's runs (RUN/metrics.jsonl): the EMA model's diffusion loss on held-out items
(`val_loss`) and on training items (`train_split_loss`) at each validation step of its training.

They are the training side of over-fitting: a held-out loss that bottoms out and rises while the training-split
loss keeps falling. Per configuration (means over seeds) the table gives the held-out loss's lowest point and
the step of each seed's, the held-out and training-split losses at the end and the rise since the lowest point
(plots.loss_vs_step draws them against the step). Cheap to have (`train.val_every`), but a loss, not a sample
quality: a rise need not show in FID (docs/evaluation.md#memorisation has the sample side).
"""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from sparsedm.experiments.aggregate import RUNS, config_order, group_key
from sparsedm.experiments.comparisons import config_cells, table_lines
from sparsedm.runs.plots import read_metrics
from sparsedm.runs.run_dir import METRICS


@dataclass
class LossCurve:
    """One run's validations: steps, held-out loss, training-split loss (each once per step, the last logged;
    None for runs trained before sparsedm logged the training split's)."""

    key: tuple  # (method, S, p, b): aggregate.group_key
    seed: int
    steps: List[int]
    held_out: List[float]
    train_split: List[Optional[float]]

    @property
    def lowest(self) -> Tuple[int, float]:
        index = int(np.argmin(self.held_out))
        return self.steps[index], self.held_out[index]


def read_loss_curves(sweep_dir, records: List[dict]) -> List[LossCurve]:
    """The validation losses of each run of `records` (dicts with `run`, `method`, `sparsity`, `prune_rate`,
    `seed`) that logged at least two; a resumed run logs a step twice, and its last line counts."""
    curves = []
    for record in records:
        folder = Path(sweep_dir) / RUNS / record["run"]
        if not (folder / METRICS).is_file():
            continue  # e.g. an archive kept without it
        by_step = {}
        for line in read_metrics(folder):
            if line.get("val_loss") is not None:
                by_step[line["step"]] = (line["val_loss"], line.get("train_split_loss"))
        if len(by_step) < 2:
            continue
        steps = sorted(by_step)
        held_out, train_split = zip(*(by_step[step] for step in steps))
        curves.append(LossCurve(group_key(record), record["seed"], steps, list(held_out), list(train_split)))
    return curves


def by_config(curves: List[LossCurve]) -> Dict[tuple, List[LossCurve]]:
    groups = defaultdict(list)
    for curve in curves:
        groups[curve.key].append(curve)
    return {key: sorted(groups[key], key=lambda c: c.seed) for key in sorted(groups, key=config_order)}


def loss_table(curves: List[LossCurve]) -> str:
    """Markdown, one line per configuration (means over its seeds); empty without curves."""
    if not curves:
        return ""
    header = ["Method", "S", "p", "Seeds", "Lowest held-out loss", "At step (per seed)", "Held-out loss at end"]
    header += ["Rise since lowest", "Training-split loss at end"]
    lines = []
    for key, runs in by_config(curves).items():
        lowest = [run.lowest for run in runs]
        end = [run.held_out[-1] for run in runs]
        rise = [run.held_out[-1] - low for run, (_, low) in zip(runs, lowest)]
        lines.append(
            f"| {config_cells(*key)} | {len(runs)} | {np.mean([low for _, low in lowest]):.4f} "
            f"| {', '.join(f'{step:,}' for step, _ in lowest)} | {np.mean(end):.4f} | {np.mean(rise):+.4f} "
            f"| {_mean_or_dash([run.train_split[-1] for run in runs])} |"
        )
    return "\n".join(table_lines(header, lines)) + "\n"


def _mean_or_dash(values: List[Optional[float]]) -> str:
    return "–" if any(value is None for value in values) else f"{np.mean(values):.4f}"
