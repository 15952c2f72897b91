"""Settings of Latent Diffusion's first stage: the autoencoder trained here (`sparsedm train-autoencoder`)
and how a diffusion run uses a trained one (the `autoencoder:` block of an `ldm` config).

    cfg = load_autoencoder_config("configs/autoencoder_openmoji_cpu.yaml", ["train.steps=500"])
"""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from sparsedm.config_loader import load_config
from sparsedm.data.images import ImageDataConfig, check_config
from sparsedm.errors import UserError

KINDS = ("vq", "kl")
RECON_LOSSES = ("l1", "mse")


@dataclass
class AutoencoderConfig:
    """Architecture; defaults are LDM-VQ-4's first stage (f = 4, Z = 8192, d = 3, no attention but the middle)."""

    kind: str = "vq"  # vq (diffusers VQModel, as LDM-VQ-4) | kl (AutoencoderKL, as LDM-KL)
    block_out_channels: List[int] = field(default_factory=lambda: [128, 256, 512])  # per level; f = 2^(levels-1)
    layers_per_block: int = 2  # res blocks per level (LDM: num_res_blocks 2)
    latent_channels: int = 3  # d, channels of the latent the UNet sees (LDM-VQ-4: 3)
    num_vq_embeddings: int = 8192  # vq: codebook size Z (LDM-VQ-4: 8192)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every level's channels


@dataclass
class AutoencoderTrainConfig:
    """The reconstruction objective only: LDM adds LPIPS and a patch GAN, which are not implemented here."""

    steps: int = 20000  # optimiser steps (or set `epochs`)
    epochs: Optional[int] = None  # if set, steps = epochs x batches per epoch
    batch_size: int = 12  # images per step
    lr: float = 1e-4  # Adam learning rate, constant (taming/LDM: 4.5e-6 x batch size x GPUs)
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])  # Adam's (β1, β2), as taming/LDM
    recon_loss: str = "l1"  # pixel loss on [-1, 1] images: l1 | mse
    codebook_weight: float = 1.0  # vq: weight of the VQ loss (codebook term + 0.25 x commitment), taming's 1.0
    codebook_restart_every: int = 100  # vq: steps between restarts of codes unused since the last (0 = off)
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) || N(0, I)) (LDM-KL: 1e-6)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    log_every: int = 50  # steps between lines of metrics.jsonl


@dataclass
class AutoencoderExperiment:
    task: str = "autoencoder"  # the first stage of Latent Diffusion; train it with `sparsedm train-autoencoder`
    seed: int = 0  # seeds weights, data order and the KL posterior's samples
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)


@dataclass
class FirstStageConfig:
    """The frozen, dense autoencoder a Latent Diffusion run works in (never sparse, never trained there)."""

    path: Optional[str] = (
        None  # diffusers VQModel / AutoencoderKL folder: train-autoencoder's --out, or a pipeline's vqvae/
    )
    scaling_factor: Optional[float] = (
        None  # latents x this for the UNet; null: 1.0 for VQ (LDM-VQ-4), KL: its config.json value, else 1/std
    )
    encode_batch_size: int = 64  # images per encoder pass when the latents are cached


def load_autoencoder_config(path: Optional[str], overrides=()) -> DictConfig:
    """Schema defaults <- YAML <- overrides for `train-autoencoder`, validated."""
    cfg = load_config(path, overrides, AutoencoderExperiment)
    if cfg.task != "autoencoder":
        raise UserError(
            f"{path} is a task={cfg.task} config; train-autoencoder takes one such as configs/autoencoder_openmoji_cpu.yaml"
        )
    validate_autoencoder_experiment(cfg)
    return cfg


def validate_autoencoder_experiment(cfg) -> None:
    check_config(cfg.data)
    model, train = cfg.model, cfg.train
    if model.kind not in KINDS:
        raise UserError(f"model.kind={model.kind!r} is unknown; use vq or kl")
    if (
        not model.block_out_channels
        or min(model.block_out_channels) < 1
        or model.layers_per_block < 1
        or model.latent_channels < 1
    ):
        raise UserError("model.block_out_channels, model.layers_per_block and model.latent_channels must be positive")
    if any(c % model.norm_num_groups for c in model.block_out_channels):
        raise UserError(
            f"model.norm_num_groups={model.norm_num_groups} must divide every entry of model.block_out_channels"
        )
    if model.kind == "vq" and model.num_vq_embeddings < 2:
        raise UserError(f"model.num_vq_embeddings={model.num_vq_embeddings} must be >= 2")
    factor = 2 ** (len(model.block_out_channels) - 1)
    if cfg.data.image_size % factor:
        raise UserError(f"data.image_size={cfg.data.image_size} is not divisible by the downsampling factor f={factor}")
    if train.steps < 1 and not train.epochs:
        raise UserError(f"train.steps={train.steps} must be >= 1")
    if train.epochs is not None and train.epochs < 1:
        raise UserError(f"train.epochs={train.epochs} must be >= 1 (or null to use train.steps)")
    if train.batch_size < 1 or train.log_every < 1:
        raise UserError("train.batch_size and train.log_every must be >= 1")
    if train.lr <= 0:
        raise UserError(f"train.lr={train.lr} must be > 0")
    if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
        raise UserError(f"train.betas={list(train.betas)} must be two numbers in [0, 1), e.g. [0.5, 0.9]")
    if train.recon_loss not in RECON_LOSSES:
        raise UserError(f"train.recon_loss={train.recon_loss!r} is unknown; use l1 or mse")
    if train.codebook_weight < 0 or train.kl_weight < 0 or train.codebook_restart_every < 0:
        raise UserError("train.codebook_weight, train.kl_weight and train.codebook_restart_every must be >= 0")
