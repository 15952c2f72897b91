"""`sparsedm report SWEEP`: the table and plots of a sweep, rebuilt from its finished runs.

SWEEP/results.csv             one row per (method, S, p): FID and KID mean and std, the per-seed scores, the
                              paired FID difference to Dense and to Small-Dense with its 95% interval and verdict,
                              costs and their ratios
SWEEP/results.md              the paper's table, the paired comparisons with Dense and Small-Dense by FID and KID
                              (each verdict beside its Holm-adjusted one), then dynamic methods paired
                              with Static-DM and with their largest p, and block-structured configurations
                              with unstructured (comparisons.py), a note on what they are;
                              learning curves, equal-FLOPs and equal-CPU-seconds pairs and memorisation
                              (curves.py) when runs were
                              scored at several steps; the validation losses (losses.py); the commits the runs
                              came from
SWEEP/fid_vs_sparsity.png     FID against S, a line per method (and p); Dense as a level with its ± std band
SWEEP/fid_vs_train_flops.png  FID against training FLOPs as a fraction of dense; for runs scored at several
                              steps, every scored point at its cumulative training FLOPs
SWEEP/kid_vs_train_flops.png  the same by KID, for runs scored at several steps with KID
SWEEP/fid_vs_train_seconds.png every scored point at the process CPU seconds of its training steps, for runs
                              scored at several steps that recorded them (train/step_clock.py)
SWEEP/fid_vs_step.png         FID against the scored step (runs scored at several steps, curves.py)
SWEEP/memorisation_vs_step.png FID held-out minus FID train, and the near-copy shares (Inception,
                              pixels), against the step
SWEEP/loss_vs_step.png        the held-out diffusion loss, and its gap to the training split's, against the step
                              (runs that logged validations: losses.py)
SWEEP/fid_vs_exploration.png  FID against the exploration rate (runs that recorded it)
SWEEP/samples_S<S>.png        for each S: the first samples of Dense and of each sparse method from the same
                              noise, one row per run (sample_pictures.py)

Every file is replaced atomically: the jobs of a sharded sweep may rebuild the report at the same time.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from sparsedm.experiments.aggregate import (
    SWEEP_FILE,
    SWEEP_FIX,
    Row,
    aggregate,
    common_protocol,
    markdown_table,
    protocol_note,
    provenance_note,
    read_evaluated_runs,
    write_csv,
)
from sparsedm.experiments.baselines import get_method
from sparsedm.experiments.comparisons import (
    BLOCKS_NOTE,
    OTHERS_NOTE,
    baselines_family,
    comparison_table,
    primary_table,
    versus_baselines,
    versus_largest_prune_rate,
    versus_static,
    versus_unstructured,
)
from sparsedm.experiments.curves import (
    FLOPS_TOLERANCE,
    SECONDS,
    equal_cost_pairs,
    equal_cost_table,
    has_cost,
    has_curves,
    memorisation_table,
    per_step_table,
    read_curve_records,
    rows_by_step,
)
from sparsedm.experiments.losses import loss_table, read_loss_curves
from sparsedm.experiments.plots import (
    fid_vs_cumulative_flops,
    fid_vs_cumulative_seconds,
    fid_vs_exploration,
    fid_vs_sparsity,
    fid_vs_step,
    fid_vs_train_flops,
    loss_vs_step,
    memorisation_vs_step,
)
from sparsedm.experiments.sample_pictures import sparsity_pictures
from sparsedm.runs.files import read_json, writing
from sparsedm.runs.run_dir import write_text_atomically

LOSSES_HEADING = (
    "\n## Validation loss\n\nThe EMA model's diffusion loss on held-out and on training items at each validation "
    "of training (metrics.jsonl), means over seeds: a held-out loss that rises from its lowest point while the "
    "training-split loss falls is over-fitting on the training side (a loss, not a sample quality).\n\n"
)


@dataclass
class Report:
    rows: List[Row]
    markdown: str  # the table and its note, as in results.md
    files: List[Path]


def curves_section(records: List[dict]) -> str:
    """The learning-curve tables of curves.py, as markdown."""
    by_step = rows_by_step(records)
    pairs = equal_cost_table(equal_cost_pairs(records)) or "No sparse point has a Dense point to pair with.\n"
    section = (
        "\n## Learning curves\n\nEach scored step.\n\n"
        + per_step_table(by_step)
        + "\n### Equal training FLOPs\n\nEach sparse point paired, seed by seed, with the Dense points on either "
        f"side of its cumulative training FLOPs: the last at or below its own ({FLOPS_TOLERANCE:.1%} more counting "
        "as equal) and the first above; no interpolation, the share says what Dense spent. Per FLOP: sparse ahead "
        "of a Dense point that spent as much or more, or Dense ahead of a sparse point while spending as much or "
        "less; a pair that shows neither says nothing per FLOP.\n\n" + pairs
    )
    if not has_cost(records, SECONDS):
        return section
    seconds = equal_cost_table(equal_cost_pairs(records, SECONDS), SECONDS) or "No sparse point has a pair.\n"
    return (
        section
        + "\n### Equal training CPU seconds\n\nThe same pairing by the process CPU seconds of the training steps "
        "up to each scored step (summary.json's `train_cpu_s`, docs/run_folder.md), seed by seed, a baseline point "
        "counting as equal only if it spent at least as much. Seconds are measured, not counted: they move with "
        "the machine and its load, so compare runs trained on one machine, and read a pair against the spread "
        "of the same configuration run twice.\n\n" + seconds
    )


def primary_comparison(sweep_dir: Path) -> Optional[str]:
    """The `primary_comparison` of the config the sweep was started with (SWEEP/sweep.json), if it names one."""
    path = sweep_dir / SWEEP_FILE
    if not path.exists():
        return None
    return read_json(path, SWEEP_FIX, {"config": dict})["config"].get("primary_comparison")


def build_report(sweep_dir) -> Report:
    sweep_dir = Path(sweep_dir)
    records = read_evaluated_runs(sweep_dir)
    protocol = common_protocol(records)
    rows = aggregate(records)
    baseline_comparisons = versus_baselines(rows)
    baselines = comparison_table(baseline_comparisons, baselines_family(baseline_comparisons))
    others = comparison_table(
        versus_static(rows) + versus_largest_prune_rate(rows), "comparisons against Static-DM and p"
    )
    blocks = comparison_table(versus_unstructured(rows), "comparisons of blocks against unstructured")
    tables = "\n".join(table for table in (markdown_table(rows), baselines, others, blocks) if table)
    primary = primary_comparison(sweep_dir)
    if primary is not None:
        tables = primary_table(baseline_comparisons, primary) + "## All configurations\n\n" + tables
    kid = any(record.get("kid") is not None for record in records)
    markdown = (
        tables + "\n" + protocol_note(protocol, kid) + (OTHERS_NOTE if others else "") + (BLOCKS_NOTE if blocks else "")
    )
    curve_records = read_curve_records(sweep_dir)
    curves = has_curves(curve_records)
    if curves:
        markdown += curves_section(curve_records)
    memorisation = memorisation_table(curve_records or records)
    if memorisation:
        markdown += "\n## Memorisation\n\n" + memorisation
    loss_curves = read_loss_curves(sweep_dir, records)
    if loss_curves:
        markdown += LOSSES_HEADING + loss_table(loss_curves)
    markdown += "\n" + provenance_note(records)
    files = [sweep_dir / "results.csv", sweep_dir / "results.md"]
    with writing():
        write_csv(rows, files[0])
        write_text_atomically(files[1], markdown)
        files.append(fid_vs_sparsity(rows, sweep_dir / "fid_vs_sparsity.png"))
        if curves:
            files.append(fid_vs_step(rows_by_step(curve_records), sweep_dir / "fid_vs_step.png"))
            files.append(fid_vs_cumulative_flops(curve_records, sweep_dir / "fid_vs_train_flops.png"))
            if any(record.get("kid") is not None for record in curve_records):
                files.append(fid_vs_cumulative_flops(curve_records, sweep_dir / "kid_vs_train_flops.png", "kid"))
            if has_cost(curve_records, SECONDS):
                files.append(fid_vs_cumulative_seconds(curve_records, sweep_dir / "fid_vs_train_seconds.png"))
            scored = [record for record in curve_records if "near_copy" in record]
            if scored:
                files.append(memorisation_vs_step(scored, sweep_dir / "memorisation_vs_step.png"))
        else:
            files.append(fid_vs_train_flops(rows, sweep_dir / "fid_vs_train_flops.png"))
        if loss_curves:
            files.append(loss_vs_step(loss_curves, sweep_dir / "loss_vs_step.png"))
        if any(r.exploration_rate is not None for r in rows if get_method(r.method).sparse):
            files.append(fid_vs_exploration(rows, sweep_dir / "fid_vs_exploration.png"))
        files += sparsity_pictures(sweep_dir, records)
    return Report(rows, markdown, files)
