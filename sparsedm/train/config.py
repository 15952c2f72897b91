"""Settings of the training loop, sampling and distribution, shared by every task."""

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import List, Optional

from sparsedm.config_checks import check_run_length
from sparsedm.diffusion.config import Sampler
from sparsedm.errors import UserError, choice
from sparsedm.train.loggers import check_log_to


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast, CPU and GPU
    fp16 = "fp16"  # autocast + gradient scaler, GPU


@dataclass
class TrainConfig:
    # how long the run is: one of the two is set, the other null (a YAML's epochs replaces the default steps)
    steps: Optional[int] = 2000  # optimiser steps (the paper counts epochs: set `epochs` instead to derive it)
    epochs: Optional[int] = None  # if set, steps = epochs x batches per epoch (paper: 600 ChiroDiff, 150 LDM)
    batch_size: int = 128  # global batch size (split over ranks with torchrun)
    lr: float = 1e-3  # AdamW learning rate, constant (paper: 1e-3 ChiroDiff, 2.4e-5 / 2e-6 LDM)
    weight_decay: float = 1e-2  # AdamW weight decay (paper: 1e-2)
    grad_clip: Optional[float] = None  # clip the global gradient norm at this; null = off (ChiroDiff 0.1, LDM off)
    ema_decay: float = 0.999  # EMA of the weights, used for sampling (warm-up as in LDM)
    precision: Precision = Precision.fp32  # fp32 | bf16 (autocast, CPU and GPU) | fp16 (autocast + scaler, GPU)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    log_every: int = 25  # steps between lines of metrics.jsonl
    # jsonl (RUN/metrics.jsonl, required) and tensorboard (RUN/tb/); [jsonl] turns TensorBoard off
    log_to: List[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    sample_every: int = 500  # steps between TensorBoard grids of 16 samples from the EMA weights (0 = none)
    val_every: int = 500  # steps between validation losses of the EMA model (0 = only at the start and the end)
    val_batches: int = 4  # validation batches per evaluation
    # stop after this step with a checkpoint; --resume continues bit-exactly (the way to split a run into jobs)
    stop_at: Optional[int] = None
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    compress_checkpoints: bool = True  # store the zeros of weights, EMA and Adam moments as bit-packed masks
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    keep_steps: List[int] = field(default_factory=list)  # milestones kept for good, e.g. [1500, 3000] (to score later)

    def __post_init__(self):
        check_run_length(self)
        if self.weight_decay < 0:
            raise UserError(f"train.weight_decay={self.weight_decay} must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")
        self.precision = choice(Precision, self.precision, "train.precision")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise UserError("train.checkpoint_every, train.log_every and train.keep_checkpoints must be >= 1")
        self.log_to = check_log_to(self.log_to)
        if self.val_every < 0:
            raise UserError(
                f"train.val_every={self.val_every} must be >= 0 (0 = validation loss only at the start and end)"
            )
        if any(step < 1 for step in self.keep_steps):
            raise UserError(f"train.keep_steps={list(self.keep_steps)} must hold steps >= 1")
        self.keep_steps = sorted(set(self.keep_steps))
        if self.sample_every < 0:
            raise UserError(f"train.sample_every={self.sample_every} must be >= 0 (0 = no sample grids)")


@dataclass
class SampleConfig:
    sampler: Sampler = Sampler.ddim  # ddpm | ddim
    steps: int = 50  # denoising steps (DDPM with steps < T uses a strided schedule)
    eta: float = 0.0  # DDIM's η (0 = deterministic)
    variance_strength: float = 1.0  # DDPM: noise std x this (1 = plain DDPM; ChiroDiff 0.75); ddim ignores it
    num: int = 64  # samples written by `sparsedm sample`
    batch_size: int = 256  # samples generated per forward pass

    def __post_init__(self):
        self.sampler = choice(Sampler, self.sampler, "sample.sampler")
        if self.steps < 1 or self.num < 1:
            raise UserError("sample.steps and sample.num must be >= 1")

    def with_options(self, **options) -> "SampleConfig":
        """A copy with the options that are not None in place of these values (e.g. from the command line)."""
        return replace(self, **{key: value for key, value in options.items() if value is not None})


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    check_masks: bool = False  # compare a hash of the masks across ranks at every update; stop on mismatch
