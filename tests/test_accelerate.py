"""sparsedm.integrations.accelerate: the fp16 path (unscale, mask, clip) against a real GradScaler; and
examples/train_unconditional_sparse.py under `accelerate launch` with 2 CPU processes on gloo: identical masks on
both ranks, 2 x batch b accumulated = 1 x batch 2b, and save_state / load_state mid-run resumes with the same masks.

accelerate 1.15.0's `--cpu` starts a single process (more need an mpirun hostfile), so the runs use
`--multi_gpu`, which starts them with torchrun, and ACCELERATE_USE_CPU=true, which keeps them on CPU and gloo.
"""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TinyGRU, gru_loss

from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.masks import masks_fingerprint

pytest.importorskip("accelerate")

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_unconditional_sparse.py"
# 64 discs, 2 processes x 8 a step: 4 steps an epoch; RigL every 2 steps
TINY = ["--num-images", "64", "--max-train-steps", "8", "--update-interval", "2", "--lr-warmup-steps", "2"]


class ScalingAccelerator:
    """The parts of Accelerator the integration calls, with fp16's GradScaler (which Accelerate uses on GPUs only)."""

    def __init__(self, optimizer):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        self.optimizer, self.sync_gradients, self.registered = optimizer, True, []

    def unscale_gradients(self):
        self.scaler.unscale_(self.optimizer)

    def unwrap_model(self, model):
        return model

    def register_for_checkpointing(self, *objects):
        self.registered += objects


class Wrapped:
    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_fp16_gradients_are_unscaled_then_masked_then_clipped_once():
    from sparsedm.integrations.accelerate import after_backward, prepare_engine

    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    accelerator = ScalingAccelerator(optimizer)
    engine = prepare_engine(accelerator, model, Wrapped(optimizer), SparseConfig(method="rigl", update_interval=2), 10)
    assert engine.optimizer is optimizer and accelerator.registered == [engine]
    gru_loss(model, torch.Generator().manual_seed(0)).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.zero_grad()

    accelerator.scaler.scale(gru_loss(model, torch.Generator().manual_seed(0))).backward()
    accelerator.sync_gradients = False  # a micro-step inside an accumulated batch: nothing happens
    assert after_backward(accelerator, engine, max_grad_norm=1.0) is None
    torch.testing.assert_close(engine.params["proj_in.weight"].grad, 1024 * reference["proj_in.weight"])
    accelerator.sync_gradients = True
    norm = after_backward(accelerator, engine, max_grad_norm=1e-3)
    masked = [g * engine.masks[n] if n in engine.masks else g for n, g in reference.items()]
    assert norm == pytest.approx(torch.nn.utils.get_total_norm(masked).item(), rel=1e-4)  # unscaled, then masked
    for name, param in engine.params.items():
        assert (param.grad[~engine.masks[name]] == 0).all()
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert total.item() == pytest.approx(1e-3, rel=1e-3)  # clipped once, after unscaling
    accelerator.scaler.step(optimizer)  # the scaler accepts the step: no second unscale was asked of it
    accelerator.scaler.update()
    assert engine.after_optimizer_step() is None and engine.step == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *args: str, processes: int = 2) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes > 1:
        command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(free_port())]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # the script's flag rules
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*command, str(EXAMPLE), "--out", str(out), *TINY, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    masks = [torch.load(out / f"masks_rank{r}.pt", weights_only=True) for r in range(processes)]
    for other in masks[1:]:  # every rank holds the same topology
        assert other["step"] == masks[0]["step"]
        assert all(torch.equal(other["masks"][n], m) for n, m in masks[0]["masks"].items())
    return {
        "masks": masks[0]["masks"],
        "model": torch.load(out / "model.pt", weights_only=True),
        "summary": json.loads((out / "summary.json").read_text()),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerate")
    return {
        "plain": launch(root / "plain", "--train-batch-size", "8", "--checkpointing-steps", "3"),
        "root": root,
    }


@pytest.mark.slow
def test_the_example_runs_offline_in_one_process_with_bf16(tmp_path):
    run = launch(tmp_path, "--train-batch-size", "8", "--mixed-precision", "bf16", processes=1)
    assert run["summary"] == {
        "steps": 8,
        "sparsity": pytest.approx(0.5, abs=1e-3),
        "updates": 3,
        "processes": 1,
        "mixed_precision": "bf16",
    }
    for name, mask in run["masks"].items():
        assert (run["model"][name][~mask] == 0).all()


@pytest.mark.slow
def test_masks_are_equal_on_both_ranks_after_updates(runs):
    plain = runs["plain"]
    assert plain["summary"] == {
        "steps": 8,
        "sparsity": pytest.approx(0.5, abs=1e-3),
        "updates": 3,
        "processes": 2,
        "mixed_precision": "no",
    }  # t_end = 0.75: steps 2, 4, 6
    initial = torch.load(
        runs["root"] / "plain" / "checkpoints" / "step_3" / "custom_checkpoint_0.pkl", weights_only=True
    )
    model = runpy.run_path(str(EXAMPLE))["make_model"](16)
    engine = SparseEngine(  # the example's engine, with the state save_state wrote
        model, torch.optim.AdamW(model.parameters()), SparseConfig(prune_rate=0.3, update_interval=2), 8
    )
    engine.load_state_dict(initial)
    assert engine.step == 3 and engine.masks_fingerprint() == masks_fingerprint(initial["masks"])
    moved = sum(int((plain["masks"][n] != m).sum()) for n, m in initial["masks"].items())
    assert moved > 0  # the topology changed after the checkpoint, and both ranks agree on it (launch checks)
    for name, mask in plain["masks"].items():
        assert (plain["model"][name][~mask] == 0).all()


@pytest.mark.slow
def test_accumulating_two_batches_of_b_equals_one_batch_of_2b(runs):
    accumulated = launch(runs["root"] / "accumulated", "--train-batch-size", "4", "--gradient-accumulation-steps", "2")
    plain = runs["plain"]
    assert accumulated["summary"]["steps"] == 8 and accumulated["summary"]["updates"] == 3
    assert all(torch.equal(accumulated["masks"][n], m) for n, m in plain["masks"].items())
    for name, weight in plain["model"].items():
        torch.testing.assert_close(accumulated["model"][name], weight, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_save_state_and_load_state_mid_run_resume_with_the_same_masks(runs):
    checkpoint = runs["root"] / "plain" / "checkpoints" / "step_3"  # mid-epoch, between two mask updates
    resumed = launch(runs["root"] / "resumed", "--train-batch-size", "8", "--resume-from-checkpoint", str(checkpoint))
    plain = runs["plain"]
    assert resumed["summary"]["steps"] == 8
    assert all(torch.equal(resumed["masks"][n], m) for n, m in plain["masks"].items())
    for name, weight in plain["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0)
