"""The autoencoder is trained by the denoiser's loop: dense, resumable bit-identically (codebook restarts and
KL noise included), stopped by Ctrl-C with a checkpoint, and its folder is what an ldm config reads."""

import json
import os
import signal

import pytest
import torch
from ldm_helpers import data_overrides, ldm_overrides, write_shapes

from sparsedm.cli import main
from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint
from sparsedm.tasks.autoencoder import AutoencoderTask

TINY = [
    "model.block_out_channels=[8,16,16]",
    "model.norm_num_groups=4",
    "model.num_vq_embeddings=64",
    "train.steps=12",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.log_every=2",
    "train.codebook_restart_every=4",  # restarts at 4, 8, 12: a stop at 6 falls between two
    "train.checkpoint_every=100",
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae_train")
    return write_shapes(root / "shapes"), root / "cache"


def train_autoencoder(images, out, *overrides, flags=()):
    args = ["train-autoencoder", "configs/autoencoder_openmoji_cpu.yaml", "--out", str(out), "--no-progress"]
    return main([*args, *data_overrides(*images), *TINY, *overrides, *flags])


def weights(out) -> bytes:
    return (out / "diffusion_pytorch_model.safetensors").read_bytes()


def events(out) -> list:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "event" in r]


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_resume_is_bit_identical(tmp_path, images, kind):
    assert train_autoencoder(images, tmp_path / "full", f"model.kind={kind}") == 0
    assert train_autoencoder(images, tmp_path / "split", f"model.kind={kind}", "train.stop_at=6") == 0
    assert not (tmp_path / "split" / "config.json").exists()  # no autoencoder until the run is finished
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == [6]
    assert train_autoencoder(images, tmp_path / "split", f"model.kind={kind}", flags=["--resume"]) == 0

    full, split = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("full", "split"))
    assert full["weights_sha256"] == split["weights_sha256"]
    assert weights(tmp_path / "full") == weights(tmp_path / "split")
    assert full["method"] == "dense" and full["sparsity_actual"] == 0  # no sparse block: trained dense
    if kind == "vq":  # the restart after the resume moved the same codes as the straight run's
        restarts = events(tmp_path / "full")
        assert [r["step"] for r in restarts] == [4, 8, 12] and events(tmp_path / "split") == restarts
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("full", "split"))
    assert {k: v for k, v in a.items() if k != "wall_time_s"} == {k: v for k, v in b.items() if k != "wall_time_s"}


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_and_resumes(tmp_path, images, monkeypatch, capsys):
    hook = AutoencoderTask.after_optimizer_step

    def interrupted_at_step_5(self, model, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the loop finishes the step
        return hook(self, model, step)

    monkeypatch.setattr(AutoencoderTask, "after_optimizer_step", interrupted_at_step_5)
    assert train_autoencoder(images, tmp_path / "run") == 0
    assert "stopped early with a checkpoint" in capsys.readouterr().out
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == [5]
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "config.json").exists()
    monkeypatch.setattr(AutoencoderTask, "after_optimizer_step", hook)

    assert train_autoencoder(images, tmp_path / "run", flags=["--resume"]) == 0
    assert train_autoencoder(images, tmp_path / "straight") == 0
    assert weights(tmp_path / "run") == weights(tmp_path / "straight")


@pytest.mark.slow
def test_the_folder_is_what_an_ldm_run_reads_and_is_not_trained_over(tmp_path, images, capsys):
    ae = tmp_path / "ae"
    assert train_autoencoder(images, ae, "train.stop_at=6") == 0
    assert train_autoencoder(images, ae, flags=["--resume"]) == 0
    shapes, cache = images
    args = ["train", "configs/ldm_openmoji_cpu.yaml", "--out", str(tmp_path / "ldm"), "--no-progress"]
    assert main([*args, *ldm_overrides(shapes, cache, ae), "train.steps=2"]) == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "ldm" / "checkpoints")[-1])
    stored = json.loads((ae / "config.json").read_text())["scaling_factor"]
    assert state["task"]["scaling_factor"] == pytest.approx(stored)

    assert main(["sample", str(ae), "--num", "2", "--no-progress"]) == 2  # a first stage has no samples of its own
    assert "an autoencoder run is neither sampled nor evaluated" in capsys.readouterr().err

    # a second run into the folder needs --overwrite, which replaces the autoencoder
    before = weights(ae)
    assert train_autoencoder(images, ae) == 2
    assert "already holds an autoencoder" in capsys.readouterr().err
    assert train_autoencoder(images, ae, "seed=1", flags=["--overwrite"]) == 0
    assert weights(ae) != before
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(ae / "checkpoints")] == [12]


def test_the_task_state_carries_the_codebook_restarts(tmp_path, images):
    """What a checkpoint must hold beyond the weights: codes used since the last restart, the generator."""
    assert train_autoencoder(images, tmp_path / "run", "train.stop_at=6") == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    restarts = state["task"]["codebook_restarts"]
    assert restarts["used"].dtype == torch.bool and 0 < int(restarts["used"].sum()) <= 64
    assert restarts["generator"].dtype == torch.uint8
