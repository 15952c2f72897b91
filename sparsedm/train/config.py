"""Settings of the training loop, sampling and distribution, shared by every task."""

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps (the paper counts epochs: set `epochs` instead to derive it)
    epochs: Optional[int] = None  # if set, steps = epochs x batches per epoch (paper: 600 ChiroDiff, 150 LDM)
    batch_size: int = 128  # global batch size (split over ranks with torchrun)
    lr: float = 1e-3  # AdamW learning rate, constant (paper: 1e-3 ChiroDiff, 2.4e-5 / 2e-6 LDM)
    weight_decay: float = 1e-2  # AdamW weight decay (paper: 1e-2)
    grad_clip: Optional[float] = None  # clip the global gradient norm at this; null = off (ChiroDiff 0.1, LDM off)
    ema_decay: float = 0.999  # EMA of the weights, used for sampling (warm-up as in LDM)
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU and GPU) | fp16 (autocast + gradient scaler, GPU)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    log_every: int = 25  # steps between lines of metrics.jsonl
    val_every: int = 0  # steps between validation losses (0 = only at the end)
    val_batches: int = 4  # validation batches per evaluation
    stop_at: Optional[int] = (
        None  # stop early after this step with a checkpoint (split a long run into jobs); continue with --resume
    )
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim
    steps: int = 50  # denoising steps (DDPM with steps < T uses a strided schedule)
    eta: float = 0.0  # DDIM's η (0 = deterministic)
    variance_strength: float = 1.0  # DDPM: noise std x this (1 = plain DDPM; ChiroDiff 0.75); ddim ignores it
    num: int = 64  # samples written by `sparsedm sample`
    batch_size: int = 256  # samples generated per forward pass


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    check_masks: bool = False  # compare a hash of the masks across ranks at every update; stop on mismatch
