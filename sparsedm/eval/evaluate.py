"""Evaluate a trained run: sample its sparse EMA weights, FID against a real split, RUN/eval.json.

    result = evaluate_run("runs/kanji", EvalSettings(num=200, split="val"))

Before sampling, the EMA weights must have the run's sparsity (the zeros of its sparse tensors against
`summary.json`'s `sparsity_actual`): an FID of weights that are not the sparse model would be reported as
if it were. Reference statistics are cached per data set, split and rendering (`Task.reference_key`) under
`data.cache_dir`/fid, so a sweep computes them once.
"""

import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from sparsedm.diffusion.config import Sampler
from sparsedm.errors import UserError, choice, optional_choice
from sparsedm.eval.fid import (
    Statistics,
    array_batches,
    cached_reference_statistics,
    compute_statistics,
    fid_from_statistics,
)
from sparsedm.inference.sampling import attach_sparse_kernels, draw_samples, load_run_model
from sparsedm.runs.run_dir import EVAL, RunDir, write_json_atomically
from sparsedm.sparse.cost import sampling_flops
from sparsedm.sparse.methods import dense_method
from sparsedm.sparse.selection import select_sparse_parameters
from sparsedm.tasks import Task

EVAL_SAMPLES = "eval_samples"  # RUN/samples/eval_samples.npz (all) and .png (the first PREVIEW)
PREVIEW = 64  # samples drawn in the PNG grid


class Split(StrEnum):
    val = "val"
    train = "train"


# Exact zeros allowed beyond the masked ones (a trained weight that happens to be 0.0), as a fraction.
SPARSITY_SLACK = 1e-3


@dataclass
class EvalSettings:
    num: Optional[int] = None  # generated samples; None = as many as the reference split holds (e.g. 200)
    sampler: Optional[Sampler] = None  # ddpm | ddim; None = the run's sample.sampler
    steps: Optional[int] = None  # denoising steps; None = the run's sample.steps (e.g. 50)
    eta: Optional[float] = None  # DDIM's η; None = the run's sample.eta
    split: Split = Split.val  # the real split FID compares with: val | train
    seed: int = 0  # seed of the sampling noise (and, for strokes, of the drawn lengths)
    batch_size: int = 50  # images per Inception forward pass
    sparse_kernels: Optional[str] = None  # None | measure | all: sample with sparse kernels (same FID within noise)

    def validate(self) -> "EvalSettings":
        if self.num is not None and self.num < 2:
            raise UserError(f"--num {self.num}: FID needs at least 2 samples (a few thousand give a stable value)")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps {self.steps} must be >= 1")
        self.sampler = optional_choice(Sampler, self.sampler, "sampler")
        self.split = choice(Split, self.split, "split")
        if self.batch_size < 1:
            raise UserError(f"batch size {self.batch_size} must be >= 1")
        return self


def ema_sparsity(model: nn.Module, cfg) -> float:
    """Fraction of exact zeros over the tensors the run's config sparsifies (for Dense: those it would)."""
    s = cfg.sparse
    tensors = select_sparse_parameters(model, list(s.include), list(s.exclude), s.exclude_time_embedding).values()
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / sum(t.numel() for t in tensors)


def check_ema_sparsity(model: nn.Module, cfg, summary: dict, run: RunDir) -> float:
    """The EMA's sparsity; UserError unless it is the run's: every masked zero, and few zeros more."""
    measured, target = ema_sparsity(model, cfg), summary["sparsity_actual"]
    if not target - 1e-9 <= measured <= target + SPARSITY_SLACK:
        raise UserError(
            f"the EMA weights of {run.path} are {measured:.4f} zeros in their sparse tensors, but the run trained "
            f"at S = {target:.4f} (summary.json sparsity_actual); its checkpoint is not the sparse model, so no FID is reported"
        )
    return measured


def reference_statistics(task: Task, settings: EvalSettings, device: torch.device, progress: bool) -> Statistics:
    """FID statistics of the real split, computed once per data set, split and rendering, then cached."""
    return cached_reference_statistics(
        task.reference_key(settings.split),
        lambda: array_batches(task.reference_images(settings.split), batch_size=settings.batch_size),
        Path(task.cfg.data.cache_dir) / "fid",
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
    )


def evaluate_run(
    run_path, settings: Optional[EvalSettings] = None, overwrite: bool = False, progress: bool = True
) -> dict:
    """Sample the run's EMA weights, FID against `settings.split`; writes and returns RUN/eval.json."""
    settings = (settings or EvalSettings()).validate()
    run = RunDir(run_path)
    run.read_config()  # a UserError if it is no run folder
    summary = run.read_summary()  # a UserError until training has finished
    if (run.path / EVAL).exists() and not overwrite:
        raise UserError(f"{run.path / EVAL} exists; pass --overwrite to replace it")
    start = time.time()
    cfg, task, model, device = load_run_model(run)
    measured = check_ema_sparsity(model, cfg, summary, run)
    kernels = attach_sparse_kernels(model, cfg, settings.sparse_kernels)
    reference = reference_statistics(task, settings, device, progress)

    num = settings.num or reference.n
    sampling = cfg.sample.with_options(sampler=settings.sampler, steps=settings.steps, eta=settings.eta)
    samples = draw_samples(
        run, task, model, device, sampling, num, settings.seed, EVAL_SAMPLES, progress, preview=PREVIEW
    )
    images = array_batches(task.to_images(samples), batch_size=settings.batch_size)
    generated = compute_statistics(images, batch_size=settings.batch_size, device=device, progress=progress)

    f_sparse, f_dense = summary["flops_forward_sparse"], summary["flops_forward_dense"]
    result = {
        "fid": fid_from_statistics(generated, reference),
        "n_samples": num,
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "eta": sampling.eta,
        "sample_seed": settings.seed,
        "reference_split": settings.split,
        "reference_size": reference.n,
        "reference_key": task.reference_key(settings.split),
        "data": summary.get("data", task.data_name()),
        "fid_features": "Inception-v3 pool3, TF 2015 weights (torch-fidelity's)",
        "ema_sparsity": measured,
        "method": summary["method"],
        "sparsity": summary["sparsity"],
        "sparsity_actual": summary["sparsity_actual"],
        "exploration_rate": summary.get("exploration_rate"),  # None for runs trained before it was recorded
        "distribution": summary["distribution"],
        "prune_rate": summary["prune_rate"],
        "update_interval": summary["update_interval"],
        "train_steps": summary["steps"],
        "seed": summary.get("seed"),
        "params_total": summary["params_total"],
        "params_nonzero": summary["params_nonzero"],
        "flops_forward_dense": f_dense,
        "flops_forward_sparse": f_sparse,
        "train_batch_size": cfg.train.batch_size,
        "flops_train_step": summary["flops_train_step"],  # per sample, like the forward FLOPs
        "flops_train_step_dense": dense_method().train_flops(f_sparse, f_dense, summary["update_interval"]),
        "flops_train_total": summary["flops_train_step"] * cfg.train.batch_size * summary["steps"],
        "flops_sample": sampling_flops(f_sparse, sampling.steps),
        "sparse_kernels": kernels is not None,  # sampled with sparse kernels (--sparse-kernels)
        "sparse_kernel_layers": kernels.swapped() if kernels is not None else [],
        "eval_time_s": time.time() - start,
    }
    write_json_atomically(run.path / EVAL, result)
    return result


def settings_record(settings: EvalSettings) -> dict:
    """What makes two evaluations comparable (neither the Inception batch size nor sparse kernels change FID)."""
    record = asdict(settings)
    record.pop("batch_size")
    record.pop("sparse_kernels")
    return record
