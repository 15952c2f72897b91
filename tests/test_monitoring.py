"""Watching a run: TensorBoard's event file holds the scalars of metrics.jsonl and sample grids, the pictures of
`sparsedm plot` appear, and neither changes what is trained. Read back with TensorBoard's own reader."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparsedm.cli import main


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return [
        *tiny_run,
        "train.steps=8",
        "train.log_every=2",
        "train.val_every=4",
        "train.val_batches=1",
        "train.checkpoint_every=4",
        "sample.steps=2",
        "sparse.method=rigl",
        "sparse.update_interval=2",
        "sparse.t_end=1.0",
    ]


def train(out, tiny, *overrides):
    return main(["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress", *tiny, *overrides])


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_holds_the_scalars_and_sample_grids_and_changes_nothing(tmp_path, tiny):
    run = tmp_path / "run"
    assert train(run, tiny, "train.sample_every=4") == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = records(run)
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert [s for s, _ in scalars(events, "train/loss")] == [s for s, _ in losses] == [2, 4, 6, 8]
    assert [v for _, v in scalars(events, "train/loss")] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert [s for s, _ in scalars(events, "val/loss")] == [0, 4, 8]
    fit = [(r["step"], pytest.approx(r["train_split_loss"], rel=1e-6)) for r in logged if "train_split_loss" in r]
    assert scalars(events, "val/train_split_loss") == fit and [s for s, _ in fit] == [0, 4, 8]
    assert {s for s, _ in scalars(events, "train/sparsity")} == {2, 4, 6, 8}
    assert [s for s, _ in scalars(events, "train/lr")] == [2, 4, 6, 8]
    updates = [r for r in logged if r.get("event") == "mask_update"]
    assert [u["step"] for u in updates] == [2, 4, 6, 8]
    for tag, key in (("mask_update/exploration_rate", "exploration_rate"), ("mask_update/replaced", "replaced")):
        assert scalars(events, tag) == [(u["step"], pytest.approx(u[key], rel=1e-6)) for u in updates]
    rates = [v for _, v in scalars(events, "mask_update/exploration_rate")]
    assert rates == sorted(rates) and 0.5 < rates[0] and rates[-1] <= 1.0
    grids = events.Images("samples")
    assert [g.step for g in grids] == [4, 8] and grids[0].width > 64 and grids[0].height > 64
    assert {p.name for p in run.iterdir()} >= {"curves.png", "layers.png"}  # drawn at the end of training

    quiet = tmp_path / "quiet"
    assert train(quiet, tiny, "train.log_to=[jsonl]") == 0
    assert not (quiet / "tb").exists()
    fingerprint = lambda path: json.loads((path / "summary.json").read_text())["weights_sha256"]  # noqa: E731
    assert fingerprint(quiet) == fingerprint(run)  # sampling for TensorBoard leaves training as it was


def test_a_resumed_run_hides_what_was_logged_after_its_checkpoint(tmp_path, tiny):
    run = tmp_path / "run"
    assert train(run, tiny, "train.stop_at=6") == 0  # checkpoints at 4 and 6
    (run / "checkpoints" / "step_00000006.pt").unlink()  # as if killed after step 6's logs, before its checkpoint
    assert train(run, tiny, "--resume") == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [s for s, _ in scalars(events, "train/loss")] == [2, 4, 6, 8]
    assert scalars(events, "train/loss") == [(r["step"], pytest.approx(r["loss"])) for r in records(run) if "loss" in r]


def test_plot_draws_a_run_and_bad_input_gets_one_line(tmp_path, tiny, capsys):
    run = tmp_path / "run"
    assert train(run, tiny, "train.log_to=[jsonl]", "train.stop_at=4") == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0  # a run still training: the curves only
    out = capsys.readouterr().out
    assert str(run / "curves.png") in out and "layers.png" not in out
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"step": 5, "lo')  # a line being written: left out
    assert main(["plot", str(run)]) == 0

    def error(path):
        code = main(["plot", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        return err

    assert "does not exist" in error(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    assert "metrics.jsonl is missing" in error(tmp_path / "empty")
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 0.5}\nnot json\n{"step": 4, "loss": 0.4}\n')
    assert "line 2 is not JSON" in error(run)
    assert train(tmp_path / "other", tiny, "train.log_to=[tensorboard]") == 2
    assert "train.log_to" in capsys.readouterr().err


@pytest.mark.slow
def test_the_training_items_loss_falls_below_the_held_out_one_when_a_model_over_fits(tmp_path, tiny_cache):
    """A small data set (about 30 training characters) trained 400 steps: the held-out loss levels off at 0.30
    while the training items' loss, with the same noise, falls on to 0.18 (measured here)."""
    from tiny_models import tiny_chirodiff

    run = tmp_path / "run"
    overrides = [*tiny_chirodiff(hidden_size=32, batch_size=16), tiny_cache, "data.max_items=160", "train.steps=400"]
    overrides += ["train.val_every=100", "train.val_batches=1", "train.lr=3e-3", "train.log_to=[jsonl]"]
    assert main(["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(run), "--no-progress", *overrides]) == 0
    validations = [r for r in records(run) if "val_loss" in r]
    assert [r["step"] for r in validations] == [0, 100, 200, 300, 400]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_split_loss_final"] == validations[-1]["train_split_loss"]
    assert summary["train_split_loss_final"] < 0.75 * summary["val_loss_final"]
    gaps = [r["val_loss"] - r["train_split_loss"] for r in validations]
    assert gaps[-1] > 1.3 * gaps[1]  # the gap widens with training: 0.077 at step 100, 0.120 at 400 (measured)
