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
