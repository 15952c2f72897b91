"""`sparsedm sweep` on a tiny grid: the runs it makes, the files it writes, and how it continues: finished runs
are never redone, an interrupted run resumes, a trained but unevaluated run is only evaluated, and a sweep
folder refuses another setup. FID uses pooled pixels (fid_stub) instead of Inception."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
from fid_stub import use_pooled_pixels
from PIL import Image
from tiny_models import tiny_chirodiff

from sparsedm.cli import main
from sparsedm.config import load_config
from sparsedm.experiments import sweep as sweep_module
from sparsedm.experiments.grid import RunSpec
from sparsedm.experiments.report import build_report
from sparsedm.runs.run_dir import RunDir

RUNS = ["dense-seed0", "static-S0.5-seed0", "rigl-S0.5-p0.1-seed0", "rigl-S0.5-p0.5-seed0"]


@pytest.fixture(autouse=True)
def _stub(monkeypatch):
    use_pooled_pixels(monkeypatch)


def tiny(cache):
    return [
        *tiny_chirodiff(cache),
        "train.steps=6",
        "train.checkpoint_every=3",
        "train.val_batches=1",
        "sparse.update_interval=2",
    ]


def sweep_args(out, cache, *extra):
    """`sparsedm sweep` of the tiny config: Dense, Static-DM and RigL-DM (p 0.1 and 0.5) at S = 0.5, one seed."""
    grid = ["--methods", "dense", "static", "rigl", "--sparsities", "0.5", "--prune-rates", "0.1", "0.5"]
    evaluation = ["--seeds", "1", "--num", "4", "--sample-steps", "2", "--no-progress"]
    return ["sweep", "configs/chirodiff_kanjivg_cpu.yaml", *tiny(cache), "--out", str(out), *grid, *evaluation, *extra]


def sweep(out, capsys, *extra, cache=None):
    code = main(sweep_args(out, cache or out.parent / "cache", *extra))
    return code, capsys.readouterr()


def mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sweep_runs_the_grid_writes_every_file_and_continues_without_redoing(tmp_path, capsys, monkeypatch, caplog):
    out = tmp_path / "sweep"
    code, captured = sweep(out, capsys)
    assert code == 0, captured.err
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(RUNS)
    assert sorted(p.name for p in out.iterdir()) == [
        "fid_vs_exploration.png",
        "fid_vs_sparsity.png",
        "fid_vs_train_flops.png",
        "loss_vs_step.png",
        "results.csv",
        "results.md",
        "runs",
        "samples_S0.5.png",
        "sweep.json",
    ]
    for name in RUNS:
        run = out / "runs" / name
        assert {"summary.json", "eval.json", "config.yaml"} <= {p.name for p in run.iterdir()}
        summary = json.loads((run / "summary.json").read_text())
        assert summary["method"] == name.split("-")[0] and summary["steps"] == 6 and summary["seed"] == 0
    assert "4 runs: 4 trained, 0 evaluated, 0 finished before" in captured.out
    assert "| RigL-DM | 0.5 | 0.5 |" in (out / "results.md").read_text()

    # again: nothing is redone, nothing is rewritten
    before = mtimes(out)
    calls = []
    monkeypatch.setattr(sweep_module.Trainer, "fit", lambda self: calls.append(self) or {})
    code, captured = sweep(out, capsys)
    assert code == 0 and calls == [] and mtimes(out) == before
    assert "4 runs: 0 trained, 0 evaluated, 4 finished before" in captured.out
    monkeypatch.undo()
    use_pooled_pixels(monkeypatch)

    # interrupted runs: one stopped after its step-3 checkpoint, one before any checkpoint, one before evaluation
    resumed, restarted, unevaluated = (out / "runs" / name for name in RUNS[1:])
    (resumed / "summary.json").unlink(), (resumed / "eval.json").unlink()
    (resumed / "checkpoints" / "step_00000006.pt").unlink()
    shutil.rmtree(restarted / "checkpoints")
    (restarted / "summary.json").unlink(), (restarted / "eval.json").unlink()
    (unevaluated / "eval.json").unlink()
    unevaluated_summary = (unevaluated / "summary.json").read_text()
    with caplog.at_level(logging.INFO, logger="sparsedm.train.trainer"):
        code, captured = sweep(out, capsys)
    assert code == 0, captured.err
    assert "4 runs: 2 trained, 1 evaluated, 1 finished before" in captured.out
    assert all((out / "runs" / name / "eval.json").is_file() for name in RUNS)
    resumes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumes == [f"resumed from {resumed / 'checkpoints' / 'step_00000003.pt'} at step 3"]
    assert json.loads((restarted / "summary.json").read_text())["steps"] == 6
    assert (unevaluated / "summary.json").read_text() == unevaluated_summary  # not trained again

    # a run whose samples are gone is left out of the sample picture, with a warning, and the report is still built
    with Image.open(out / "samples_S0.5.png") as picture:
        four_rows = picture.size[1]
    (unevaluated / "samples" / "eval_samples.npz").unlink()
    with caplog.at_level(logging.WARNING, logger="sparsedm.experiments.sample_pictures"):
        assert "| RigL-DM | 0.5 | 0.5 |" in build_report(out).markdown
    assert any("rigl-S0.5-p0.5-seed0 left out of samples_S0.5.png" in r.getMessage() for r in caplog.records)
    with Image.open(out / "samples_S0.5.png") as picture:
        assert picture.size[1] == pytest.approx(four_rows * 3 / 4, abs=2)


def test_a_sweep_folder_keeps_one_setup(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, captured = sweep(out, capsys, "--methods", "dense")
    assert code == 0, captured.err
    code, captured = sweep(out, capsys, "train.steps=7", "--methods", "dense")
    err = captured.err.strip()
    assert code == 2 and "config.train.steps=6, not 7" in err and "\n" not in err, err
    code, captured = sweep(out, capsys, "--methods", "dense", "--num", "5")
    assert code == 2 and "eval.num=4, not 5" in captured.err
    code, captured = sweep(out, capsys, "seed=3", "--methods", "dense")
    assert code == 2 and "the grid sets these" in captured.err


@pytest.mark.slow
def test_runs_paused_at_stop_at_continue_in_a_later_call(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, captured = sweep(out, capsys, "train.stop_at=3", "--methods", "dense", "rigl", "--prune-rates", "0.1")
    assert code == 0 and "2 runs: 0 trained, 0 evaluated, 0 finished before, 2 stopped" in captured.out
    assert not list(out.glob("runs/*/eval.json")) and not (out / "results.md").exists()
    code, captured = sweep(out, capsys, "--methods", "dense", "rigl", "--prune-rates", "0.1")
    assert code == 0 and "2 runs: 2 trained, 0 evaluated, 0 finished before" in captured.out
    assert len(list(out.glob("runs/*/eval.json"))) == 2


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, capsys, caplog):
    out = tmp_path / "sweep"
    broken = RunDir(out / "runs" / "dense-seed0")  # interrupted, and its only checkpoint is truncated
    broken.write_config(
        load_config(
            "configs/chirodiff_kanjivg_cpu.yaml", tiny(tmp_path / "cache") + RunSpec("dense", None, None, 0).overrides()
        )
    )
    broken.checkpoints.mkdir()
    (broken.checkpoints / "step_00000003.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.ERROR, logger="sparsedm.experiments.sweep"):
        code, captured = sweep(out, capsys, "--methods", "dense", "--seeds", "2")
    assert code == 2
    assert "2 runs: 1 trained, 0 evaluated, 0 finished before, 1 failed" in captured.out
    assert "1 of 2 runs failed (dense-seed0)" in captured.err
    assert any(
        "dense-seed0 failed: checkpoint" in r.getMessage() and "is corrupt" in r.getMessage() for r in caplog.records
    )
    assert "| Dense | – | – |" in (out / "results.md").read_text()  # the table of the run that finished


@pytest.mark.slow
def test_with_workers_the_reference_comes_first_and_every_run_is_handed_out(tmp_path, capsys, monkeypatch):
    """The hand-off to worker processes, run in this process (test_sweep_parallel spawns real workers)."""
    cache = tmp_path / "cache"
    handed = []

    def in_process(fn, jobs, workers, progress_count, total, **options):
        handed.append(sorted(jobs))
        # the reference statistics, the splits' pictures and features exist already
        assert workers == 2 and len(list((cache / "fid").iterdir())) == 5
        assert total == 6 * len(jobs) and progress_count() == 0
        results = {}
        for name, args in jobs.items():
            try:
                results[name] = fn(*args)
            except Exception as error:  # as the pool reports it
                results[name] = error
        assert progress_count() == 6 * 2  # the broken run never logs a step
        return results

    monkeypatch.setattr(sweep_module, "run_in_workers", in_process)
    out = tmp_path / "sweep"
    broken = RunDir(out / "runs" / "static-S0.5-seed0")
    broken.write_config(
        load_config("configs/chirodiff_kanjivg_cpu.yaml", tiny(cache) + RunSpec("static", 0.5, None, 0).overrides())
    )
    broken.checkpoints.mkdir()
    (broken.checkpoints / "step_00000003.pt").write_bytes(b"not a checkpoint")
    code, captured = sweep(
        out, capsys, "--methods", "dense", "static", "rigl", "--prune-rates", "0.1", "--workers", "2"
    )
    assert code == 2 and "3 runs: 2 trained, 0 evaluated, 0 finished before, 1 failed" in captured.out
    assert "1 of 3 runs failed (static-S0.5-seed0)" in captured.err
    assert handed == [
        ["dense-seed0", "rigl-S0.5-p0.1-seed0", "static-S0.5-seed0"]
    ]  # all three went to the workers, at once


def test_train_only_trains_and_a_later_call_scores(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, captured = sweep(out, capsys, "--methods", "dense", "--train-only")
    assert code == 0 and "1 runs: 1 trained, 0 evaluated, 0 finished before" in captured.out, captured
    assert (out / "runs" / "dense-seed0" / "summary.json").exists()
    assert not (out / "runs" / "dense-seed0" / "eval.json").exists() and not (out / "results.md").exists()
    code, captured = sweep(out, capsys, "--methods", "dense", "--train-only")
    assert code == 0 and "1 runs: 0 trained, 0 evaluated, 1 finished before" in captured.out
    code, captured = sweep(out, capsys, "--methods", "dense")
    assert code == 0 and "1 runs: 0 trained, 1 evaluated, 0 finished before" in captured.out
    assert (out / "runs" / "dense-seed0" / "eval.json").exists() and (out / "results.md").exists()


@pytest.mark.slow
def test_every_kept_step_is_scored_and_a_lost_score_is_made_again(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, captured = sweep(out, capsys, "train.keep_steps=[2,4]", "--methods", "dense", "rigl", "--prune-rates", "0.1")
    assert code == 0, captured.err
    for name in ("dense-seed0", "rigl-S0.5-p0.1-seed0"):
        scored = sorted(p.name for p in (out / "runs" / name / "eval").iterdir())
        assert scored == ["step_00000002.json", "step_00000004.json", "step_00000006.json"]
    (out / "runs" / "dense-seed0" / "eval" / "step_00000004.json").unlink()
    assert "1 kept steps to score" in sweep_module.run_state(out, "dense-seed0")
    code, captured = sweep(out, capsys, "train.keep_steps=[2,4]", "--methods", "dense", "rigl", "--prune-rates", "0.1")
    assert code == 0 and "2 runs: 0 trained, 1 evaluated, 1 finished before" in captured.out
    assert (out / "runs" / "dense-seed0" / "eval" / "step_00000004.json").exists()
    # a run whose checkpoints are gone (results kept without them) has nothing left to score: it is done
    shutil.rmtree(out / "runs" / "dense-seed0" / "checkpoints")
    (out / "runs" / "dense-seed0" / "eval" / "step_00000004.json").unlink()
    assert sweep_module.run_state(out, "dense-seed0") == "done"


def test_a_run_whose_job_was_killed_is_not_listed_as_running(tmp_path):
    out = tmp_path / "sweep"
    (out / "runs" / "dense-seed0").mkdir(parents=True)
    lock = out / "runs" / "dense-seed0.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert sweep_module.run_state(out, "dense-seed0").startswith("running on")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    assert not sweep_module.run_state(out, "dense-seed0").startswith("running")
