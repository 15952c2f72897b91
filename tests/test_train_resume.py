"""Runs are never lost: resume continues bit-identically, checkpoints survive a SIGKILL mid-write, and a
non-finite loss stops with the step named and the last good checkpoint kept."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_models import tiny_chirodiff

from sparsedm.cli import main
from sparsedm.config import read_run_config
from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint
from sparsedm.runs.run_dir import RunDir

TINY = [
    *tiny_chirodiff(),
    "model.num_layers=1",
    "train.log_every=5",
    "train.val_batches=1",
    "sparse.update_interval=4",
    "sparse.prune_rate=0.3",
    "sparse.t_end=1.0",
    "train.keep_checkpoints=5",
]


@pytest.fixture
def cache(tiny_cache):
    return tiny_cache


def train(out, *overrides, flags=()):
    return main(
        ["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress", *TINY, *overrides, *flags]
    )


@pytest.mark.parametrize("method", ["rigl", "magran"])
def test_resume_is_bit_identical(tmp_path, cache, method):
    assert (
        train(
            tmp_path / "full",
            cache,
            f"sparse.method={method}",
            "train.steps=14",
            "train.checkpoint_every=100",
            "sparse.grad_accumulation=2",
        )
        == 0
    )
    # the same 14-step run, stopped after step 7 (inside RigL's window before the update at 8), then resumed
    assert (
        train(
            tmp_path / "split",
            cache,
            f"sparse.method={method}",
            "train.steps=14",
            "train.stop_at=7",
            "train.checkpoint_every=100",
            "sparse.grad_accumulation=2",
        )
        == 0
    )
    assert not (tmp_path / "split" / "summary.json").exists()
    assert (
        train(
            tmp_path / "split",
            cache,
            f"sparse.method={method}",
            "train.steps=14",
            "train.checkpoint_every=100",
            "sparse.grad_accumulation=2",
            flags=["--resume"],
        )
        == 0
    )
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    split = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert full["weights_sha256"] == split["weights_sha256"]
    assert full["masks_sha256"] == split["masks_sha256"]
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name
    # metrics of the resumed run are not duplicated
    steps = [
        r["step"]
        for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 14


def test_resume_refuses_a_different_config(tmp_path, cache, capsys):
    assert train(tmp_path / "run", cache, "train.steps=4") == 0
    assert train(tmp_path / "run", cache, "train.steps=8", "sparse.sparsity=0.9", flags=["--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: sparse.sparsity=0.9 differs from the run's 0.5 in" in err and err.count("\n") == 1
    assert train(tmp_path / "empty", cache, "train.steps=4", flags=["--resume"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def _killed_before_its_first_checkpoint(run):
    """The folder a job killed before its first checkpoint leaves: config.yaml and the first log lines."""
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, cache, caplog):
    assert train(tmp_path / "straight", cache, "train.steps=4") == 0
    assert train(tmp_path / "run", cache, "train.steps=4") == 0
    _killed_before_its_first_checkpoint(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="sparsedm"):
        assert train(tmp_path / "run", cache, "train.steps=4", flags=["--resume"]) == 0
    said = [r.getMessage() for r in caplog.records if "no checkpoint" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(
        "has no checkpoint yet (it stopped before its first): training from step 0"
    )
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    logged = lambda run: (run / "metrics.jsonl").read_text()  # noqa: E731
    # the killed job's lines are gone, not doubled: the log is a straight run's but for the elapsed times
    assert [json.loads(line).keys() for line in logged(tmp_path / "run").splitlines()] == [
        json.loads(line).keys() for line in logged(tmp_path / "straight").splitlines()
    ]


def test_a_folder_without_a_checkpoint_is_not_reused_for_another_config(tmp_path, cache, capsys):
    assert train(tmp_path / "run", cache, "train.steps=4") == 0
    _killed_before_its_first_checkpoint(tmp_path / "run")
    before = (tmp_path / "run" / "config.yaml").read_text()
    assert train(tmp_path / "run", cache, "train.steps=4", "seed=3", flags=["--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: seed=3 differs from the run's 0" in err and "--overwrite: it has no checkpoint" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    # a key a resume may change is the new run's: it starts from step 0 with it
    assert train(tmp_path / "run", cache, "train.steps=5", flags=["--resume"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 5
    assert read_run_config(RunDir(tmp_path / "run")).train.steps == 5


def test_a_finished_run_whose_checkpoints_were_deleted_is_not_trained_again(tmp_path, cache, capsys):
    assert train(tmp_path / "run", cache, "train.steps=4") == 0
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    assert train(tmp_path / "run", cache, "train.steps=4", flags=["--resume"]) == 2
    assert "holds a finished run (summary.json) without checkpoints" in capsys.readouterr().err


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(tmp_path, cache, capsys):
    # a learning rate this large blows the weights up within a few steps
    code = train(
        tmp_path / "run", cache, "train.steps=200", "train.lr=1e30", "train.grad_clip=null", "train.checkpoint_every=1"
    )
    err = capsys.readouterr().err
    assert code == 2 and "non-finite loss at step" in err and "last good checkpoint" in err
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert kept and all(
        torch.isfinite(t).all() for t in load_checkpoint(kept[-1])["model"].values() if t.is_floating_point()
    )


def test_bf16_autocast_trains_on_cpu(tmp_path, cache):
    assert train(tmp_path / "run", cache, "train.steps=6", "train.precision=bf16") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["loss_final"] < 10
    # and bf16 was really used: the same run in fp32 ends with other weights
    assert train(tmp_path / "fp32", cache, "train.steps=6", "train.precision=fp32") == 0
    fp32 = json.loads((tmp_path / "fp32" / "summary.json").read_text())
    assert fp32["weights_sha256"] != summary["weights_sha256"]


def test_fp16_needs_a_gpu(tmp_path, cache, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    assert train(tmp_path / "run", cache, "train.steps=2", "train.precision=fp16") == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_while_checkpointing_leaves_a_loadable_checkpoint(tmp_path, cache):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "sparsedm",
        "train",
        "configs/chirodiff_kanjivg_cpu.yaml",
        "--out",
        str(out),
        "--no-progress",
        *TINY,
        cache,
        "train.steps=100000",
        "train.checkpoint_every=1",
        "model.hidden_size=64",
        "model.num_layers=2",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "checkpoints"
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(ckpts)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert len(list_checkpoints(ckpts)) >= 2, "training did not start"
        # kill as soon as a temporary checkpoint file appears: the process is mid-write
        while not (mid_write := any(p.name.startswith(".step_") for p in ckpts.iterdir())) and time.time() < deadline:
            pass
        assert mid_write, "no temporary checkpoint file was seen: the kill would not be mid-write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    state = load_checkpoint(list_checkpoints(ckpts)[-1])
    assert state["step"] >= 2
    assert (
        train(
            out,
            cache,
            f"train.steps={state['step'] + 2}",
            "train.checkpoint_every=1",
            "model.hidden_size=64",
            "model.num_layers=2",
            flags=["--resume"],
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["steps"] == state["step"] + 2


def test_a_resume_that_changes_the_steps_says_it_moves_t_end(tmp_path, cache, caplog):
    """t_end and the cosine p_t are fractions of train.steps: raising it on resume changes the schedule from
    there on, and the run says so; train.stop_at splits a run without changing it."""
    assert train(tmp_path / "run", cache, "sparse.method=rigl", "train.steps=8") == 0
    with caplog.at_level(logging.WARNING, logger="sparsedm"):
        assert train(tmp_path / "run", cache, "sparse.method=rigl", "train.steps=12", flags=["--resume"]) == 0
    moved = [r.getMessage() for r in caplog.records if "moves t_end" in r.getMessage()]
    assert len(moved) == 1 and "train.steps 8 -> 12 moves t_end from step 8 to 12" in moved[0], moved
    caplog.clear()
    assert train(tmp_path / "split", cache, "sparse.method=rigl", "train.steps=8", "train.stop_at=4") == 0
    with caplog.at_level(logging.WARNING, logger="sparsedm"):
        assert train(tmp_path / "split", cache, "sparse.method=rigl", "train.steps=8", flags=["--resume"]) == 0
    assert "moves t_end" not in caplog.text


def test_milestones_are_kept_beside_the_rolling_checkpoints_and_resume_stays_exact(tmp_path, cache):
    steps = ["train.steps=14", "train.checkpoint_every=4", "train.keep_checkpoints=1", "train.keep_steps=[3,7]"]
    assert train(tmp_path / "full", cache, "sparse.method=rigl", *steps) == 0
    kept = [p.name for p in list_checkpoints(tmp_path / "full" / "checkpoints")]
    # 3 and 7 are milestones (3 is not a multiple of checkpoint_every); of 4, 8, 12 and 14 only the newest stays
    assert kept == ["step_00000003.pt", "step_00000007.pt", "step_00000014.pt"]
    assert load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000003.pt")["step"] == 3
    # stopped at 5 and resumed: the milestone written after the resume is the straight run's
    assert train(tmp_path / "split", cache, "sparse.method=rigl", *steps, "train.stop_at=5") == 0
    assert train(tmp_path / "split", cache, "sparse.method=rigl", *steps, flags=["--resume"]) == 0
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000007.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_00000007.pt")
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert full["weights_sha256"] == json.loads((tmp_path / "split" / "summary.json").read_text())["weights_sha256"]
    assert full["provenance"]["torch"] == torch.__version__ and full["provenance"]["threads"] == 1


def test_milestones_past_the_end_are_refused(tmp_path, cache, capsys):
    assert train(tmp_path / "run", cache, "train.steps=4", "train.keep_steps=[2,9]") == 2
    err = capsys.readouterr().err
    assert "keep_steps=[2, 9] goes past the run's 4 steps" in err and not (tmp_path / "run" / "checkpoints").exists()
    assert train(tmp_path / "run2", cache, "train.steps=4", "train.keep_steps=[0]") == 2
    assert "must hold steps >= 1" in capsys.readouterr().err


def test_the_training_steps_cpu_and_wall_seconds_are_recorded_and_carried_across_a_resume(tmp_path, cache):
    common = ["train.steps=10", "train.checkpoint_every=100", "sparse.method=rigl"]
    assert train(tmp_path / "split", cache, *common, "train.stop_at=5") == 0
    stopped = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])["step_seconds"]
    assert stopped["train_cpu_s"] > 0 and stopped["train_wall_s"] > 0
    assert train(tmp_path / "split", cache, *common, flags=["--resume"]) == 0
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    # the second job's steps are added to the first's, and the steps are a part of the whole run's wall time
    assert summary["train_cpu_s"] > stopped["train_cpu_s"] and summary["train_wall_s"] > stopped["train_wall_s"]
    assert summary["train_wall_s"] < summary["wall_time_s"]
    lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    cpu = [line["train_cpu_s"] for line in lines if "loss" in line]
    assert len(cpu) == 2 and cpu[0] == pytest.approx(stopped["train_cpu_s"]) and cpu[1] == summary["train_cpu_s"]


def test_a_checkpoint_from_before_the_seconds_record_resumes_and_says_what_its_seconds_count(tmp_path, cache, caplog):
    common = ["train.steps=10", "train.checkpoint_every=100", "sparse.method=rigl"]
    assert train(tmp_path / "run", cache, *common, "train.stop_at=5") == 0
    path = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    state = load_checkpoint(path)
    del state["step_seconds"]
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="sparsedm"):
        assert train(tmp_path / "run", cache, *common, flags=["--resume"]) == 0
    warned = [r.getMessage() for r in caplog.records if "predates the training-seconds record" in r.getMessage()]
    assert len(warned) == 1 and "count steps 6 on only" in warned[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["train_cpu_s"]
