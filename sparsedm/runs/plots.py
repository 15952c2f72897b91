"""`sparsedm plot RUN`: pictures of one run, also drawn when `sparsedm train` finishes.

RUN/curves.png   training and validation loss against the step, every mask update marked by a vertical line;
                 below, the exploration rate after each update (dynamic methods)
RUN/layers.png   per sparse tensor, in model order: target density (ERK/uniform), actual density and
                 exploration rate (the share of its weights that were ever active)

Matplotlib's object API with the Agg canvas, so no display is needed.
"""

import json
import os
from pathlib import Path
from typing import List

from matplotlib.figure import Figure

from sparsedm.errors import UserError
from sparsedm.runs.run_dir import METRICS, SUMMARY

CURVES = "curves.png"
LAYERS = "layers.png"


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> Path:
    """Write a PNG through a temporary file renamed into place: a reader (or a second writer) never sees half."""
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    figure.savefig(temporary, dpi=dpi)
    os.replace(temporary, path)
    return path


def read_metrics(run: Path) -> List[dict]:
    """The records of RUN/metrics.jsonl; a last line still being written is left out, any other bad line is an error."""
    path = run / METRICS
    if not run.is_dir():
        raise UserError(f"{run} does not exist; give a run folder written by `sparsedm train ... --out RUN`")
    if not path.is_file():
        raise UserError(f"{path} is missing: {run} is not a run folder, or its training has not started")
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break  # a line the trainer is writing right now
            raise UserError(f"{path} line {number} is not JSON ({line[:40]!r}); the file is corrupt") from None
    if not any("loss" in r for r in records):
        raise UserError(f"{path} holds no training loss yet; plot again after train.log_every steps")
    return records


def plot_curves(records: List[dict], path: Path) -> Path:
    losses = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fit = [(r["step"], r["train_split_loss"]) for r in records if r.get("train_split_loss") is not None]
    updates = [r for r in records if r.get("event") == "mask_update" and not r.get("skipped")]
    explored = [(r["step"], r["exploration_rate"]) for r in updates if r.get("exploration_rate") is not None]
    figure = Figure(figsize=(7, 5.5 if explored else 4))
    axes = figure.add_subplot(2 if explored else 1, 1, 1)
    axes.plot(*zip(*losses), color="tab:blue", label="training loss (mean since the last point)")
    if val:
        axes.plot(*zip(*val), color="tab:orange", marker="o", linestyle="--", label="validation loss (EMA weights)")
    if fit:
        axes.plot(*zip(*fit), color="tab:green", marker=".", linestyle=":", label="the same on training items")
    for i, update in enumerate(updates):
        axes.axvline(update["step"], color="grey", linewidth=0.6, alpha=0.5, label="mask update" if i == 0 else None)
    axes.set_ylabel("diffusion loss")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if explored:
        lower = figure.add_subplot(2, 1, 2, sharex=axes)
        lower.plot(*zip(*explored), color="tab:red", marker=".", label="exploration rate")
        lower.set_ylabel("exploration rate")
        lower.set_ylim(0, 1.02)
        lower.grid(alpha=0.3)
        lower.set_xlabel("step")
    else:
        axes.set_xlabel("step")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_layers(tensors: List[dict], title: str, path: Path) -> Path:
    """Horizontal bars, one group per tensor, the first tensor of the model at the top."""
    names = [t["name"] for t in tensors]
    series = (
        ("target_density", "target density", "tab:gray"),
        ("density", "actual density", "tab:blue"),
        ("exploration_rate", "exploration rate", "tab:red"),
    )
    height = 0.27
    figure = Figure(figsize=(7.5, 1.7 + 0.42 * len(names)))
    axes = figure.add_subplot()
    for k, (key, label, colour) in enumerate(series):
        positions = [i + (k - 1) * height for i in range(len(names))]
        axes.barh(positions, [t.get(key) or 0.0 for t in tensors], height=height, color=colour, label=label)
    axes.set_yticks(range(len(names)), names, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("fraction of the tensor's weights")
    axes.set_title(title, fontsize="medium")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, frameon=False)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_run(run_path) -> List[Path]:
    """Draw RUN/curves.png and, once training has finished (summary.json), RUN/layers.png; returns the files."""
    run = Path(run_path)
    files = [plot_curves(read_metrics(run), run / CURVES)]
    summary_path = run / SUMMARY
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            raise UserError(f"{summary_path} is not valid JSON; the file is corrupt") from None
        if summary.get("tensors"):
            title = (
                f"{summary.get('method', '')}, S = {summary.get('sparsity', '?')}: density and exploration per tensor"
            )
            files.append(plot_layers(summary["tensors"], title, run / LAYERS))
    return files
