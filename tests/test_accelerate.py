"""sparsedm.integrations.accelerate: the fp16 path (unscale, mask, clip) against a real GradScaler; and
examples/train_unconditional_sparse.py under `accelerate launch` with 2 CPU processes on gloo: identical masks on
both ranks, 2 x batch b accumulated = 1 x batch 2b, and save_state / load_state mid-run resumes with the same masks.
In one process with a real Accelerator: diffusers' EMAModel kept sparse and round-tripped through save_state, an
EMA left out reported when its weights are saved in the model, a dense checkpoint continued sparse, the load
order, compact kernels refused, the capped hint, and no pytorch_lightning import.

accelerate 1.15.0's `--cpu` starts a single process (more need an mpirun hostfile), so the runs use
`--multi_gpu`, which starts them with torchrun, and ACCELERATE_USE_CPU=true, which keeps them on CPU and gloo.
"""

import json
import logging
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
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
        "pipeline": load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"),
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
        assert (run["pipeline"][name][~mask] == 0).all()  # the EMA's weights, which diffusers' EMAModel averaged


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
    initial = torch.load(  # the EMA is custom_checkpoint_0, the engine registered after it
        runs["root"] / "plain" / "checkpoints" / "step_3" / "custom_checkpoint_1.pkl", weights_only=True
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


# -- the glue in one process, with a real Accelerator on CPU and diffusers' EMAModel ------------------------

SPARSE = SparseConfig(method="rigl", sparsity=0.8, prune_rate=0.3, update_interval=2, t_end=1.0)
CHECK = "sparsedm.sparse.sparsity_check"  # the logger of the saved-weights check


def checked(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == CHECK]


@pytest.fixture
def accelerated():
    """(Accelerator, prepared TinyGRU, AdamW, diffusers EMAModel of it), fresh on each call."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.training_utils import EMAModel

    def make():
        torch.manual_seed(0)
        model = TinyGRU()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        accelerator = Accelerator(cpu=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        return accelerator, model, optimizer, EMAModel(model.parameters(), decay=0.9)

    yield make
    AcceleratorState._reset_state(True)


def train(accelerator, model, optimizer, ema, steps: range, engine=None) -> list:
    """The loop of diffusers' examples; with an engine, its marked lines. Returns the mask updates' statistics."""
    from sparsedm.integrations.accelerate import after_backward

    updates = []
    for step in steps:
        with accelerator.accumulate(model):
            accelerator.backward(gru_loss(model, torch.Generator().manual_seed(step)))
            if engine is not None:
                after_backward(accelerator, engine, max_grad_norm=1.0)
            optimizer.step()
            optimizer.zero_grad()
        if engine is not None and (update := engine.after_optimizer_step()):
            updates.append(update)
        ema.step(model.parameters())
    return updates


def assert_sparse(engine, optimizer, ema):
    shadows = dict(zip(dict(engine.model.named_parameters()), ema.shadow_params))
    for name, param in engine.params.items():
        off = ~engine.masks[name]
        assert (param[off] == 0).all(), name
        state = optimizer.optimizer.state[param]
        assert (state["exp_avg"][off] == 0).all() and (state["exp_avg_sq"][off] == 0).all(), name
        assert (shadows[name][off] == 0).all(), name


def test_diffusers_ema_model_is_kept_sparse_and_round_trips_through_save_state(accelerated, tmp_path, caplog):
    from sparsedm.integrations.accelerate import prepare_engine

    accelerator, model, optimizer, ema = accelerated()
    engine = prepare_engine(accelerator, model, optimizer, SPARSE, 12, ema)
    train(accelerator, model, optimizer, ema, range(4), engine)
    with caplog.at_level(logging.WARNING, logger=CHECK):
        accelerator.save_state(str(tmp_path / "step_4"))
    assert not checked(caplog)  # a sparse model saves without a word
    updates = train(accelerator, model, optimizer, ema, range(4, 8), engine)
    assert updates and updates[-1]["replaced"] > 0
    assert_sparse(engine, optimizer, ema)

    accelerator, resumed, optimizer, ema_resumed = accelerated()
    engine_resumed = prepare_engine(accelerator, resumed, optimizer, SPARSE, 12, ema_resumed)
    accelerator.load_state(str(tmp_path / "step_4"))
    assert engine_resumed.step == 4 and ema_resumed.optimization_step == 4
    train(accelerator, resumed, optimizer, ema_resumed, range(4, 8), engine_resumed)
    assert engine_resumed.masks_fingerprint() == engine.masks_fingerprint()
    for name, weight in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], weight), name
    assert all(torch.equal(a, b) for a, b in zip(ema_resumed.shadow_params, ema.shadow_params))


def test_an_ema_left_out_of_the_engine_is_reported_when_its_weights_are_saved(accelerated, caplog):
    from sparsedm.integrations.accelerate import prepare_engine

    accelerator, model, optimizer, ema = accelerated()
    engine = prepare_engine(accelerator, model, optimizer, SPARSE, 12)  # the EMA left out: never masked
    train(accelerator, model, optimizer, ema, range(3), engine)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())  # how diffusers' examples save the pipeline with the EMA's weights
    with caplog.at_level(logging.WARNING, logger=CHECK):
        model.state_dict()
    (message,) = checked(caplog)
    assert "the sparse model being saved is not sparse" in message and "\n" not in message
    assert "prepare_engine(..., ema=...)" in message
    ema.restore(model.parameters())
    caplog.clear()
    model.state_dict()
    assert not checked(caplog) and engine.step == 3


def test_a_dense_accelerate_checkpoint_continues_sparse(accelerated, tmp_path):
    """A dense run that registered its EMA: register it again, load_state the dense checkpoint, then
    prepare_engine with the run's step; the continued run's own checkpoints then resume the same way."""
    from sparsedm.integrations.accelerate import prepare_engine

    accelerator, model, optimizer, ema = accelerated()
    accelerator.register_for_checkpointing(ema)
    train(accelerator, model, optimizer, ema, range(4))  # dense
    accelerator.save_state(str(tmp_path / "dense"))

    accelerator, model, optimizer, ema = accelerated()
    accelerator.register_for_checkpointing(ema)
    accelerator.load_state(str(tmp_path / "dense"))  # weights, dense Adam moments, EMA
    engine = prepare_engine(accelerator, model, optimizer, SPARSE, 12, ema, start_step=4)
    assert_sparse(engine, optimizer, ema)
    updates = train(accelerator, model, optimizer, ema, range(4, 9), engine)
    assert engine.step == 9 and [u["step"] for u in updates] == [6, 8]  # ΔT counted from the run's step
    assert_sparse(engine, optimizer, ema)
    zeros = sum(int((engine.params[n] == 0).sum()) for n in engine.masks)
    assert zeros / sum(m.numel() for m in engine.masks.values()) == pytest.approx(0.8, abs=0.01)
    accelerator.save_state(str(tmp_path / "sparse"))

    accelerator, model, optimizer, ema_resumed = accelerated()
    accelerator.register_for_checkpointing(ema_resumed)
    resumed = prepare_engine(accelerator, model, optimizer, SPARSE, 12, ema_resumed)
    accelerator.load_state(str(tmp_path / "sparse"))
    assert resumed.step == 9 and resumed.masks_fingerprint() == engine.masks_fingerprint()
    assert all(torch.equal(a, b) for a, b in zip(ema_resumed.shadow_params, ema.shadow_params))


def test_the_ema_is_registered_before_the_engine_so_load_state_restores_the_engine_last():
    from sparsedm.integrations.accelerate import prepare_engine
    from sparsedm.sparse import EMA

    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    accelerator, ema = ScalingAccelerator(optimizer), EMA(model)
    engine = prepare_engine(accelerator, model, optimizer, SparseConfig(update_interval=2), 10, ema)
    assert accelerator.registered == [ema, engine]


def test_compact_kernels_are_refused_in_one_line():
    from sparsedm.errors import UserError
    from sparsedm.integrations.accelerate import prepare_engine

    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    with pytest.raises(UserError, match="compact kernels are supported by `sparsedm train` only") as error:
        prepare_engine(ScalingAccelerator(optimizer), model, optimizer, SparseConfig(kernels="compact"), 10)
    assert "\n" not in str(error.value)


def test_the_capped_hint_names_the_statistics_the_integrations_return(accelerated, caplog):
    from sparsedm.integrations.accelerate import prepare_engine

    accelerator, model, optimizer, ema = accelerated()
    config = SparseConfig(
        method="rigl",
        prune_rate=0.5,
        prune_rate_decay="constant",
        update_interval=2,
        t_end=1.0,
        distribution="custom",
        custom_densities={"proj_in": 0.95},
    )
    engine = prepare_engine(accelerator, model, optimizer, config, 4, ema)
    with caplog.at_level(logging.WARNING, logger="sparsedm.sparse.engine"):
        (update,) = train(accelerator, model, optimizer, ema, range(2), engine)
    assert list(update["capped"]) == ["proj_in.weight"]  # 46 of 48 active: 2 inactive positions, not 23
    (message,) = [r.getMessage() for r in caplog.records if "nearly dense" in r.getMessage()]
    assert "`capped` in the statistics after_optimizer_step returns" in message


def test_the_accelerate_glue_imports_without_pytorch_lightning():
    code = "import sys, sparsedm.integrations.accelerate; print('pytorch_lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]
