"""`sparsedm archive`: a sweep's finished runs kept without weights, which the report reads and a continued sweep
skips; unfinished runs left out, another sweep's archive refused, nothing in the archive deleted."""

import json

import pytest
from test_sweep_aggregate import fake_run

from sparsedm.cli import main
from sparsedm.config import load_config
from sparsedm.errors import UserError
from sparsedm.experiments.archive import archive_sweep
from sparsedm.experiments.sweep import run_state
from sparsedm.runs.run_dir import RunDir


def finished(sweep, name, method, fid, **kw):
    """A finished run as the sweep leaves it, with the heavy files an archive must leave behind."""
    fake_run(sweep, name, method, fid, **kw)
    folder = sweep / "runs" / name
    run = RunDir(folder)
    run.write_config(load_config("configs/chirodiff_kanjivg_cpu.yaml", ["train.steps=600"]))
    summary = json.loads((folder / "summary.json").read_text())
    run.write_summary(
        {**summary, "steps": 600, "update_interval": 50, "params_nonzero": int(summary["params_nonzero"])}
    )
    (folder / "metrics.jsonl").write_text('{"step": 600, "loss": 0.1}\n')
    (folder / "eval").mkdir()
    record = {**json.loads((folder / "eval.json").read_text()), "step": 600, "train_steps": 600}
    for path in (folder / "eval" / "step_00000600.json", folder / "eval.json"):
        path.write_text(json.dumps(record))
    for heavy in ("checkpoints/step_00000600.pt", "samples/eval_samples.npz", "tb/events.out"):
        (folder / heavy).parent.mkdir(exist_ok=True)
        (folder / heavy).write_bytes(b"\0" * 1000)


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "sweep"
    (out / "runs").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"config": {"seed": 0}}))
    finished(out, "dense-seed0", "dense", 10.0)
    finished(out, "rigl-S0.5-p0.1-seed0", "rigl", 12.0, sparsity=0.5)
    (out / "runs" / "rigl-S0.5-p0.1-seed1").mkdir()  # interrupted before its first checkpoint
    (out / "samples_S0.5.png").write_bytes(b"png")
    return out


def test_only_finished_runs_are_kept_and_without_their_weights(sweep, tmp_path):
    kept, left_out = archive_sweep(sweep, tmp_path / "kept")
    assert kept == ["dense-seed0", "rigl-S0.5-p0.1-seed0"]
    assert left_out == [("rigl-S0.5-p0.1-seed1", "to do")]
    run = tmp_path / "kept" / "runs" / "rigl-S0.5-p0.1-seed0"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "eval",
        "eval.json",
        "metrics.jsonl",
        "summary.json",
    ]
    assert (run / "eval" / "step_00000600.json").read_text() == (sweep / "runs" / run.name / "eval.json").read_text()
    assert (tmp_path / "kept" / "sweep.json").read_bytes() == (sweep / "sweep.json").read_bytes()
    assert (tmp_path / "kept" / "samples_S0.5.png").read_bytes() == b"png"
    assert not (tmp_path / "kept" / "runs" / "rigl-S0.5-p0.1-seed1").exists()


def test_an_archived_run_stays_finished_for_the_sweep_and_the_report(sweep, tmp_path):
    archive_sweep(sweep, tmp_path / "kept")
    # a sweep continued from the archive skips the run: without checkpoints nothing is left to score
    assert run_state(tmp_path / "kept", "dense-seed0") == "done"
    assert main(["report", str(tmp_path / "kept")]) == 0
    table = (tmp_path / "kept" / "results.md").read_text()
    assert "10.00" in table and "12.00" in table


def test_an_archive_grows_and_never_loses_a_run(sweep, tmp_path):
    archive_sweep(sweep, tmp_path / "kept")
    (tmp_path / "kept" / "runs" / "dense-seed1").mkdir()  # kept earlier from another machine's copy
    (tmp_path / "kept" / "runs" / "dense-seed1" / "eval.json").write_text("{}")
    finished(sweep, "rigl-S0.5-p0.1-seed2", "rigl", 13.0, sparsity=0.5)
    kept, _ = archive_sweep(sweep, tmp_path / "kept")
    assert "rigl-S0.5-p0.1-seed2" in kept
    assert (tmp_path / "kept" / "runs" / "dense-seed1" / "eval.json").read_text() == "{}"


def test_another_sweep_or_a_folder_inside_the_sweep_is_refused(sweep, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.json").write_text(json.dumps({"config": {"seed": 1}}))
    with pytest.raises(UserError, match="another sweep"):
        archive_sweep(sweep, other)
    assert json.loads((other / "sweep.json").read_text()) == {"config": {"seed": 1}}
    with pytest.raises(UserError, match="inside the sweep"):
        archive_sweep(sweep, sweep / "kept")
    with pytest.raises(UserError, match="not a sweep folder"):
        archive_sweep(tmp_path / "nothing", tmp_path / "kept")


def test_the_command_lists_what_it_left_out(sweep, tmp_path, capsys):
    assert main(["archive", str(sweep), str(tmp_path / "kept")]) == 0
    out = capsys.readouterr().out
    assert "left out rigl-S0.5-p0.1-seed1: to do" in out
    assert "kept 2 finished runs" in out
