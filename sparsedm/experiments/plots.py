"""PNG figures of a sweep: FID against sparsity, training FLOPs and exploration rate, memorisation and the
validation losses against the step, and samples side by side.

Matplotlib's object API with the Agg canvas (`Figure.savefig`), so no display and no global backend.
"""

from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sparsedm.experiments.aggregate import Row, block_label, config_order, group_key, row_key
from sparsedm.experiments.baselines import get_method, has_sparsity, is_dense
from sparsedm.experiments.losses import LossCurve, by_config
from sparsedm.runs.plots import save_figure

# loss_vs_step leaves out validations before this share of training: the first ones (a loss near 1 at step 0)
# would flatten everything after them
LOSS_PLOT_FROM = 0.2
LINESTYLES = ("-", "--", ":", "-.")  # one per prune rate of a method


def _series(rows: List[Row]) -> Dict[tuple, List[Row]]:
    """Rows with an S (sparse, and Small-Dense) by (method, p, b), each sorted by S."""
    series: Dict[tuple, List[Row]] = {}
    for row in rows:
        if has_sparsity(row.method):
            series.setdefault((row.method, row.prune_rate, row.block_size), []).append(row)
    return {key: sorted(points, key=lambda r: r.sparsity) for key, points in series.items()}


def _label(method: str, prune_rate, block_size) -> str:
    return (
        get_method(method).display_name
        + (f", p = {prune_rate:g}" if prune_rate is not None else "")
        + block_label(block_size)
    )


def _config_label(method: str, sparsity, prune_rate, block_size) -> str:
    """Dense, or e.g. "RigL-DM, S = 0.5, p = 0.1", "RigL-DM, S = 0.9, p = 0.1, 16 x 16 blocks"."""
    label = get_method(method).display_name
    label += "".join(f", {name} = {value:g}" for name, value in (("S", sparsity), ("p", prune_rate)) if value)
    return label + block_label(block_size)


def _style(rows: List[Row], method: str, prune_rate) -> str:
    rates = sorted({r.prune_rate for r in rows if r.method == method and r.prune_rate is not None})
    return LINESTYLES[rates.index(prune_rate) % len(LINESTYLES)] if prune_rate is not None else "-"


def _dense_level(axes, rows: List[Row]) -> None:
    """Dense FID as a horizontal line, with a ± std band when there are several seeds."""
    for row in rows:
        if is_dense(row.method):
            axes.axhline(row.fid_mean, color="black", linewidth=1, label=get_method(row.method).display_name)
            if row.fid_std is not None:
                axes.axhspan(row.fid_mean - row.fid_std, row.fid_mean + row.fid_std, color="black", alpha=0.1)


def _config_line(method: str, sparsity, block_size) -> dict:
    """A configuration's line: the method's colour (Dense black), dashed above S = 0.75; with masks of tiles
    dash-dotted, dotted above S = 0.75."""
    high = sparsity is not None and sparsity > 0.75
    return {
        "color": "black" if is_dense(method) else get_method(method).colour,
        "linestyle": (":" if high else "-.") if (block_size or 1) > 1 else ("--" if high else "-"),
    }


def _finish_axes(figure, axes, xlabel: str, path: Path, score: str = "FID") -> Path:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"{score} (lower is better)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)


def _fid_against(rows: List[Row], x_of: Callable[[Row], float], xlabel: str, path: Path) -> Path:
    """FID (mean ± std over seeds) against one figure of each row, a line per method and p."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    _dense_level(axes, rows)
    for (method, prune_rate, block_size), points in _series(rows).items():
        axes.errorbar(
            [x_of(r) for r in points],
            [r.fid_mean for r in points],
            yerr=[r.fid_std or 0.0 for r in points],
            color=get_method(method).colour,
            linestyle=_style(rows, method, prune_rate),
            marker="s" if (block_size or 1) > 1 else "o",  # squares: masks of tiles
            capsize=3,
            label=_label(method, prune_rate, block_size),
        )
    axes.set_xlim(0, 1.02)  # both axes are fractions: S, and FLOPs as a share of dense
    return _finish_axes(figure, axes, xlabel, path)


def fid_vs_sparsity(rows: List[Row], path: Path) -> Path:
    return _fid_against(rows, lambda r: r.sparsity, "sparsity S", path)


def fid_vs_train_flops(rows: List[Row], path: Path) -> Path:
    return _fid_against(rows, lambda r: r.flops_train_rel, "training FLOPs (fraction of dense)", path)


def fid_vs_exploration(rows: List[Row], path: Path) -> Path:
    """FID against the exploration rate (Static-DM's is its density); rows of runs that did not record it are left out."""
    known = [r for r in rows if is_dense(r.method) or (get_method(r.method).sparse and r.exploration_rate is not None)]
    return _fid_against(
        known, lambda r: r.exploration_rate, "exploration rate (share of sparse weights ever active)", path
    )


def fid_vs_step(by_step: Dict[int, List[Row]], path: Path) -> Path:
    """FID (mean ± std over seeds) against the scored step, a line per configuration, Dense as a band."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    lines: Dict[tuple, List[tuple]] = {}
    for step, rows in by_step.items():
        for row in rows:
            lines.setdefault(row_key(row), []).append((step, row))
    for (method, sparsity, prune_rate, block_size), points in lines.items():
        steps = [step for step, _ in points]
        means = [row.fid_mean for _, row in points]
        if is_dense(method):
            stds = [row.fid_std or 0.0 for _, row in points]
            axes.plot(steps, means, color="black", linewidth=1, label=get_method(method).display_name)
            axes.fill_between(
                steps,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color="black",
                alpha=0.1,
            )
            continue
        axes.errorbar(
            steps,
            means,
            yerr=[row.fid_std or 0.0 for _, row in points],
            **_config_line(method, sparsity, block_size),
            marker="o",
            capsize=3,
            label=_config_label(method, sparsity, prune_rate, block_size),
        )
    axes.set_xscale("log")
    axes.set_xticks(sorted(by_step), [f"{step:,}" for step in sorted(by_step)])
    axes.xaxis.set_minor_formatter(NullFormatter())
    return _finish_axes(figure, axes, "training step", path)


def fid_vs_cumulative_flops(records: List[dict], path: Path, score: str = "fid") -> Path:
    """Every scored point (run and step) at its cumulative training FLOPs, a line per run: Dense black,
    Small-Dense grey, each sparse method its colour; `score` "kid" for KID (runs scored before it are left out)."""
    return _score_vs_cost(records, path, score, "flops_train_total", "cumulative training FLOPs")


def fid_vs_cumulative_seconds(records: List[dict], path: Path) -> Path:
    """The same at the process CPU seconds of the training steps up to each scored step (train/step_clock.py)."""
    return _score_vs_cost(records, path, "fid", "train_cpu_s", "training CPU seconds")


def _score_vs_cost(records: List[dict], path: Path, score: str, cost: str, label: str) -> Path:
    records = [record for record in records if record.get(score) is not None]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    runs: Dict[str, List[dict]] = {}
    for record in records:
        runs.setdefault(record["run"], []).append(record)
    labelled = set()
    # in the tables' order (Dense, Small-Dense, then the methods by S and p), so the legend reads as they do
    for name, points in sorted(runs.items(), key=lambda item: (config_order(group_key(item[1][0])), item[0])):
        points = sorted(points, key=lambda r: r["step"])
        key = group_key(points[0])
        config = _config_label(*key)
        axes.plot(
            [r[cost] for r in points],
            [r[score] for r in points],
            **_config_line(key[0], key[1], key[3]),
            marker="o",
            markersize=3,
            alpha=0.8,
            label=None if config in labelled else config,
        )
        labelled.add(config)
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(NullFormatter())
    return _finish_axes(figure, axes, label, path, score.upper())


def memorisation_vs_step(records: List[dict], path: Path) -> Path:
    """Three panels against the scored step, a line per configuration (means over seeds): FID against the
    held-out split minus FID against the training split, and the share of near copies in Inception features and
    in pixels, each with the held-out split's share as its baseline. All rise when a model fits its training
    items better than new ones."""
    points: Dict[tuple, Dict[int, List[dict]]] = {}
    for record in records:
        points.setdefault(group_key(record), {}).setdefault(record["step"], []).append(record)
    figure = Figure(figsize=(14, 4))
    gap_axes, *copy_axes = (figure.add_subplot(1, 3, n) for n in (1, 2, 3))
    shares = (
        ("near_copy", "near_copy_heldout", "Inception"),
        ("near_copy_pixels", "near_copy_heldout_pixels", "pixels"),
    )
    for method, sparsity, prune_rate, block_size in sorted(points, key=config_order):
        by_step = points[method, sparsity, prune_rate, block_size]
        steps = sorted(by_step)
        style = {
            **_config_line(method, sparsity, block_size),
            "marker": "o",
            "markersize": 3,
            "label": _config_label(method, sparsity, prune_rate, block_size),
        }
        gap_axes.plot(steps, [np.mean([r["fid"] - r["fid_train"] for r in by_step[step]]) for step in steps], **style)
        for axes, (key, _, _) in zip(copy_axes, shares):
            axes.plot(steps, [100 * np.mean([r[key] for r in by_step[step]]) for step in steps], **style)
    gap_axes.set_ylabel("FID held-out - FID train")
    for axes, (_, baseline, space) in zip(copy_axes, shares):
        axes.axhline(100 * records[0][baseline], color="grey", linestyle=":", label="held-out items")
        axes.set_ylabel(f"near copies of training items (%, {space})")
    scored = sorted({r["step"] for r in records})
    for axes in (gap_axes, *copy_axes):
        axes.set_xscale("log")
        axes.set_xticks(scored, [f"{step:,}" for step in scored])
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("training step")
        axes.grid(alpha=0.3)
    copy_axes[-1].legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)


def loss_vs_step(curves: List[LossCurve], path: Path) -> Path:
    """Against the step, a line per configuration (means over the seeds that logged that step): the held-out
    diffusion loss, and beside it the held-out loss minus the training-split loss when runs logged that one
    (losses.py)."""
    gaps = any(fit is not None for curve in curves for fit in curve.train_split)
    figure = Figure(figsize=(10, 4) if gaps else (6, 4))
    panels = [figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)] if gaps else [figure.add_subplot()]
    last = max(curve.steps[-1] for curve in curves)
    for (method, sparsity, prune_rate, block_size), runs in by_config(curves).items():
        points: Dict[int, List[tuple]] = {}
        for run in runs:
            for step, held, fit in zip(run.steps, run.held_out, run.train_split):
                if step >= LOSS_PLOT_FROM * last:
                    points.setdefault(step, []).append((held, None if fit is None else held - fit))
        steps = sorted(points)
        style = {
            **_config_line(method, sparsity, block_size),
            "marker": "o",
            "markersize": 3,
            "label": _config_label(method, sparsity, prune_rate, block_size),
        }
        panels[0].plot(steps, [np.mean([p[0] for p in points[s]]) for s in steps], **style)
        if gaps:
            known = [s for s in steps if all(p[1] is not None for p in points[s])]
            panels[1].plot(known, [np.mean([p[1] for p in points[s]]) for s in known], **style)
    panels[0].set_ylabel("held-out diffusion loss (EMA weights)")
    if gaps:
        panels[1].set_ylabel("held-out loss - training-split loss")
    panels[-1].legend(fontsize="small")
    for axes in panels:
        axes.set_xlabel("training step")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)


def sample_rows(images: Dict[str, np.ndarray], path: Path, gap: int = 2) -> Path:
    """One titled row of pictures per name (uint8 N x H x W x C each), e.g. a few samples per method."""
    figure = Figure(figsize=(8, 1.3 * len(images)))
    for i, (name, batch) in enumerate(images.items()):
        axes = figure.add_subplot(len(images), 1, i + 1)
        separator = np.full((batch.shape[1], gap, batch.shape[3]), 128, dtype=np.uint8)
        strip = np.concatenate([part for picture in batch for part in (picture, separator)][:-1], axis=1)
        axes.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255)
        axes.set_axis_off()
        axes.set_title(name, loc="left", fontsize="medium")
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)
