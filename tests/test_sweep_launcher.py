"""`sparsedm sweep --launcher local|slurm`: the grid as a submitit array. Through the local executor, a task
preempted mid-run (submitit's SIGUSR2) checkpoints, is requeued and ends with the run an uninterrupted sweep
trains, bit for bit; `--list` shows each run's task, job id and state."""

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch
from test_sweep import tiny

from sparsedm.cli import main
from sparsedm.errors import UserError
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.launcher import JOBS, Resources, launch, preempt_signal, task_file
from sparsedm.experiments.shards import lock_path
from sparsedm.runs.checkpoint import latest_checkpoint, load_checkpoint

pytest.importorskip("submitit")

NAME = "rigl-S0.5-p0.1-seed0"
LONG = ["train.steps=60", "train.log_every=2", "train.checkpoint_every=1000"]  # no checkpoint but the stop's


def sweep_args(out, cache, *extra):
    grid = ["--methods", "rigl", "--sparsities", "0.5", "--prune-rates", "0.1", "--seeds", "1"]
    return ["sweep", "configs/chirodiff_kanjivg_cpu.yaml", *tiny(cache), *LONG, "--out", str(out), *grid, *extra]


def steps_logged(run) -> int:
    try:
        return max([json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] or [0])
    except (FileNotFoundError, ValueError):
        return 0


def final_state(run) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    losses = [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, open(run / "metrics.jsonl"))]
    return {"summary": summary, "state": state, "losses": losses}


@pytest.mark.slow  # two trainings of 60 steps and submitit's processes: 30 s
def test_a_preempted_task_is_requeued_and_ends_with_the_uninterrupted_run(tmp_path, monkeypatch):
    # submitit's task is a new process: on one thread, as this one (conftest), or its sums are ordered otherwise
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cache = tmp_path / "cache"
    assert main(sweep_args(tmp_path / "plain", cache, "--train-only", "--no-progress")) == 0

    out = tmp_path / "launched"
    codes = []
    sweep = threading.Thread(
        target=lambda: codes.append(
            main(sweep_args(out, cache, "--train-only", "--no-progress", "--launcher", "local"))
        )
    )
    sweep.start()
    run, deadline = out / "runs" / NAME, time.time() + 120
    while steps_logged(run) < 6 and time.time() < deadline:  # training, not yet done
        time.sleep(0.02)
    holder = json.loads(lock_path(out, NAME).read_text())
    os.kill(holder["pid"], signal.SIGUSR2)  # what SLURM sends before a time limit or preemption
    sweep.join(timeout=240)
    assert codes == [0]

    (job_id,) = json.loads((out / "launcher" / JOBS).read_text())["job_ids"]
    log = (out / "launcher" / "submitit" / f"{job_id}_0_log.err").read_text()
    stopped = int(log.split("stopped at step ")[1].split()[0])
    assert 6 <= stopped < 60 and f"at step {stopped}\n" in log.split("resumed from")[1]
    assert "Requeued job" in (out / "launcher" / "submitit" / f"{job_id}_0_log.out").read_text()
    assert json.loads(task_file(out, 0).read_text())["outcomes"] == {NAME: "trained"}

    plain, launched = final_state(tmp_path / "plain" / "runs" / NAME), final_state(run)
    # the first loss line after the resume averages only the steps since it (the window restarts); all else equal
    first_after = [step for step, loss, _ in launched["losses"] if loss is not None and step > stopped][0]
    drop = lambda losses: [row for row in losses if row[0] != first_after]  # noqa: E731
    assert drop(launched["losses"]) == drop(plain["losses"])
    for key in ("weights_sha256", "masks_sha256", "loss_final", "val_loss_final"):
        assert launched["summary"][key] == plain["summary"][key], key
    for part in ("model", "ema", "engine"):
        flat_a, flat_b = flatten(plain["state"][part]), flatten(launched["state"][part])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix: tree} if torch.is_tensor(tree) else {}


def test_list_shows_each_runs_task_job_and_state(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--methods", "rigl", "static", "--sparsities", "0.5", "--prune-rates", "0.1", "--seeds", "2"]
    names = [spec.name for spec in SweepGrid(["rigl", "static"], [0.5], [0.1], 2).runs()]
    (out / "launcher").mkdir(parents=True)
    jobs = {"launcher": "slurm", "tasks": 2, "job_ids": ["77_0", "77_1"], "submitted": 0.0}
    (out / "launcher" / JOBS).write_text(json.dumps(jobs))
    failed = {"job_id": "77_1", "state": "finished", "outcomes": {names[1]: "failed", names[3]: "trained"}}
    task_file(out, 1).write_text(json.dumps(failed))
    assert main(["sweep", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), *grid, "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["0/2", names[0], "submitted", "job", "77_0", "(submitted)"]
    assert rows[1].split() == ["1/2", names[1], "failed", "job", "77_1", "(finished)"]
    assert rows[3].split()[:2] == ["1/2", names[3]] and rows[3].endswith("job 77_1 (finished)")


def test_launch_refuses_bad_options_in_one_line(tmp_path, capsys):
    base = ["sweep", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(tmp_path / "s"), "--methods", "dense"]
    for extra, message in [
        (["--tasks", "5"], "--tasks 5: give 1 to 3 (the grid's runs)"),
        (["--shard", "0/2"], "--launcher makes its own slices (--tasks N); leave out --shard and --workers"),
        (["--time", "0"], "--time 0 must be >= 1"),
    ]:
        assert main([*base, "--launcher", "local", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"sparsedm: error: {message}" or (err.startswith("sparsedm: error: ") and message in err), err
        assert "\n" not in err
    assert main([*base, "--tasks", "2"]) == 2  # given, so used or refused: not dropped without --launcher
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--tasks: options of --launcher; add --launcher slurm or local, or leave them out")
    )
    assert not (tmp_path / "s" / "launcher").exists()


def test_without_submitit_the_launcher_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError, match=r"^--launcher needs submitit, which is not installed; pip install submitit"):
        launch("configs/chirodiff_kanjivg_cpu.yaml", tmp_path, SweepGrid(), [], None, "local", None, Resources())


def test_the_preemption_signal_is_submitits(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert preempt_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "TERM")  # a cluster whose preemption sends only SIGTERM
    assert preempt_signal() == signal.SIGTERM
