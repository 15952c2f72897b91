"""The validation-loss section of `sparsedm report` (experiments/losses.py): made-up runs whose metrics.jsonl
logged held-out and training-split losses, with the answers worked out by hand."""

import json

import pytest
from test_sweep_aggregate import fake_run

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import read_runs
from sparsedm.experiments.losses import loss_table, read_loss_curves
from sparsedm.experiments.report import build_report

STEPS = (0, 500, 1000, 1500, 2000)


def with_losses(sweep, name, method, seed, held_out, train_split, sparsity=0.0, extra_lines=()):
    """A finished run (fake_run) whose metrics.jsonl has training lines and one validation per STEPS entry."""
    fake_run(sweep, name, method, 50.0, sparsity=sparsity, seed=seed)
    lines = [{"step": 50, "loss": 0.5, "lr": 1e-3}]
    lines += [{"step": s, "val_loss": v, "train_split_loss": t} for s, v, t in zip(STEPS, held_out, train_split)]
    lines += list(extra_lines)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (sweep / "runs" / name / "metrics.jsonl").write_text(text)


@pytest.fixture
def sweep(tmp_path):
    # Dense over-fits: lowest held-out loss at 1000 (seed 0) and 1500 (seed 1), rising after
    with_losses(tmp_path, "dense-seed0", "dense", 0, [1.0, 0.60, 0.50, 0.55, 0.58], [1.0, 0.55, 0.40, 0.30, 0.20])
    with_losses(tmp_path, "dense-seed1", "dense", 1, [1.0, 0.62, 0.54, 0.52, 0.56], [1.0, 0.57, 0.44, 0.34, 0.22])
    # Static-DM still falling at the end; it was resumed from step 1000, which it logged twice: the last line counts
    resumed = [{"step": 1500, "loss": 0.4}, {"step": 1000, "val_loss": 0.65, "train_split_loss": 0.60}]
    with_losses(
        tmp_path,
        "static-S0.9-seed0",
        "static",
        0,
        [1.0, 0.80, 0.70, 0.66, 0.64],
        [1.0, 0.78, 0.66, 0.61, 0.58],
        sparsity=0.9,
        extra_lines=resumed,
    )
    fake_run(tmp_path, "static-S0.9-seed1", "static", 60.0, sparsity=0.9, seed=1)  # archived without metrics.jsonl
    return tmp_path


def test_each_run_keeps_one_loss_per_validation_and_runs_without_a_log_are_left_out(sweep):
    curves = {(c.key, c.seed): c for c in read_loss_curves(sweep, read_runs(sweep))}
    assert set(curves) == {
        (("dense", None, None, None), 0),
        (("dense", None, None, None), 1),
        (("static", 0.9, None, 1), 0),
    }
    static = curves[("static", 0.9, None, 1), 0]
    assert static.steps == list(STEPS)
    assert static.held_out[2] == 0.65 and static.train_split[2] == 0.60  # the resumed run's later line
    assert curves[("dense", None, None, None), 0].lowest == (1000, 0.50)
    assert curves[("dense", None, None, None), 1].lowest == (1500, 0.52)


def test_the_table_gives_the_lowest_held_out_loss_its_steps_and_the_rise(sweep):
    table = loss_table(read_loss_curves(sweep, read_runs(sweep)))
    # Dense: lowest (0.50 + 0.52) / 2, at 1,000 and 1,500; end (0.58 + 0.56) / 2; rise (0.08 + 0.04) / 2;
    # training split at the end (0.20 + 0.22) / 2
    assert "| Dense | – | – | 2 | 0.5100 | 1,000, 1,500 | 0.5700 | +0.0600 | 0.2100 |" in table
    # Static-DM: still falling, its lowest is its last point
    assert "| Static-DM | 0.9 | – | 1 | 0.6400 | 2,000 | 0.6400 | +0.0000 | 0.5800 |" in table
    assert table.index("| Dense |") < table.index("| Static-DM |")


def test_the_report_adds_the_section_and_the_plot(sweep):
    report = build_report(sweep)
    assert "## Validation loss" in report.markdown and "| Dense | – | – | 2 | 0.5100 |" in report.markdown
    plot = sweep / "loss_vs_step.png"
    assert plot in report.files and plot.stat().st_size > 0


def test_a_sweep_without_validation_losses_has_no_section(tmp_path):
    fake_run(tmp_path, "dense-seed0", "dense", 50.0, seed=0)
    (tmp_path / "runs" / "dense-seed0" / "metrics.jsonl").write_text(json.dumps({"step": 50, "loss": 0.5}) + "\n")
    report = build_report(tmp_path)
    assert "## Validation loss" not in report.markdown and not (tmp_path / "loss_vs_step.png").exists()


def test_a_corrupt_log_is_named_in_one_line(sweep):
    path = sweep / "runs" / "dense-seed0" / "metrics.jsonl"
    path.write_text('{"step": 0, "val_loss": 1.0, "train_split_loss": 1.0}\nnot json\n{"step": 500}\n')
    with pytest.raises(UserError, match="dense-seed0/metrics.jsonl line 2 is not JSON"):
        build_report(sweep)


def test_runs_from_before_the_training_split_loss_give_the_held_out_side_alone(tmp_path):
    fake_run(tmp_path, "dense-seed0", "dense", 50.0, seed=0)
    lines = [{"step": 50, "loss": 0.5}] + [
        {"step": s, "val_loss": v} for s, v in zip(STEPS, [1.0, 0.6, 0.5, 0.45, 0.47])
    ]
    (tmp_path / "runs" / "dense-seed0" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = build_report(tmp_path)
    assert "| Dense | – | – | 1 | 0.4500 | 1,500 | 0.4700 | +0.0200 | – |" in report.markdown
    assert (tmp_path / "loss_vs_step.png").stat().st_size > 0
