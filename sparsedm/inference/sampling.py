"""Sampling from a trained run: the EMA weights of its newest checkpoint, written as samples.npz and a PNG."""

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sparsedm.config import read_run_config
from sparsedm.errors import UserError
from sparsedm.runs.checkpoint import latest_checkpoint, load_checkpoint
from sparsedm.runs.distributed import DistInfo, resolve_device
from sparsedm.runs.files import writing
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse.kernels.sampling import SparseKernelsOnFirstCall
from sparsedm.tasks import build_task
from sparsedm.train.config import SampleConfig

log = logging.getLogger(__name__)
SPARSE_KERNEL_MODES = ("measure", "all")  # --sparse-kernels: swap where measured faster | every sparse layer


def load_run_ema(run: RunDir, checkpoint: Optional[str] = None):
    """(cfg, checkpoint state, task with its state, EMA denoiser on the CPU) of a run's newest (or given) checkpoint."""
    cfg = read_run_config(run)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run.checkpoints)
    if path is None:
        raise UserError(f"{run.path} has no checkpoint yet; train it first")
    state = load_checkpoint(path)
    task = build_task(cfg)
    task.load_state_dict(state.get("task", {}))
    model = task.build_model()
    model.load_state_dict(state["ema"]["module"])
    return cfg, state, task, model


def load_run_model(run: RunDir, checkpoint: Optional[str] = None, device: str = "auto"):
    """(cfg, task, EMA denoiser on device, device) of a run."""
    cfg, _, task, model = load_run_ema(run, checkpoint)
    target = resolve_device(device if device != "auto" else cfg.train.device, DistInfo())
    return cfg, task, model.to(target).eval(), target


def sample_run(
    run_path: str,
    num: Optional[int] = None,
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    seed: int = 0,
    checkpoint: Optional[str] = None,
    progress: bool = True,
    sparse_kernels: Optional[str] = None,
) -> Path:
    """Write RUN/samples/samples.npz and .png; `sparse_kernels` (measure | all) samples with sparse kernels."""
    run = RunDir(run_path)
    cfg, task, model, device = load_run_model(run, checkpoint)
    sampling = cfg.sample.with_options(num=num, steps=steps, sampler=sampler, eta=eta)
    kernels = attach_sparse_kernels(model, cfg, sparse_kernels)
    draw_samples(run, task, model, device, sampling, sampling.num, seed, "samples", progress)
    if kernels is not None:
        log.info("sparse kernels: %s", kernels.describe())
    return run.samples


def attach_sparse_kernels(model, cfg, mode: Optional[str]) -> Optional[SparseKernelsOnFirstCall]:
    """None, or hooks that swap the layers with zeros in their weights for sparse kernels at the first forward:
    where measured faster (mode=measure; decisions cached under data.cache_dir/kernels) or all (mode=all)."""
    if mode is None:
        return None
    if mode not in SPARSE_KERNEL_MODES:
        raise UserError(f"--sparse-kernels {mode!r} is unknown; use one of {', '.join(SPARSE_KERNEL_MODES)}")
    return SparseKernelsOnFirstCall(
        model, cache_dir=Path(cfg.data.cache_dir) / "kernels", force=mode == "all", block_size=cfg.sparse.block_size
    )


def draw_samples(
    run: RunDir,
    task,
    model,
    device,
    sampling: SampleConfig,
    num: int,
    seed: int,
    name: str,
    progress: bool = True,
    preview: Optional[int] = None,
) -> dict:
    """Sample `num` with the `sampling` settings; writes RUN/samples/NAME.npz and NAME.png (of the first
    `preview` samples)."""
    samples = task.sample(model, num, torch.Generator().manual_seed(seed), device, sampling, progress=progress)
    with writing():
        run.samples.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(run.samples / f"{name}.npz", **samples)
        task.save_picture({key: array[:preview] for key, array in samples.items()}, run.samples / f"{name}.png")
    return samples
