"""Settings of Latent Diffusion's first stage: the autoencoder trained here (`sparsedm train-autoencoder`)
and how a diffusion run uses a trained one (the `autoencoder:` block of an `ldm` config).

    cfg = load_autoencoder_config("configs/autoencoder_openmoji_cpu.yaml", ["train.steps=500"])
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import List, Optional

from sparsedm.config_checks import check_run_length
from sparsedm.config_loader import load_config
from sparsedm.data.images import ImageDataConfig
from sparsedm.errors import UserError, choice


class Kind(StrEnum):
    vq = "vq"  # diffusers VQModel, as LDM-VQ-4
    kl = "kl"  # AutoencoderKL, as LDM-KL


class ReconLoss(StrEnum):
    l1 = "l1"
    mse = "mse"


@dataclass
class AutoencoderConfig:
    """Architecture; defaults are LDM-VQ-4's first stage (f = 4, Z = 8192, d = 3, no attention but the middle)."""

    kind: Kind = Kind.vq  # vq (diffusers VQModel, as LDM-VQ-4) | kl (AutoencoderKL, as LDM-KL)
    block_out_channels: List[int] = field(default_factory=lambda: [128, 256, 512])  # per level; f = 2^(levels-1)
    layers_per_block: int = 2  # res blocks per level (LDM: num_res_blocks 2)
    latent_channels: int = 3  # d, channels of the latent the UNet sees (LDM-VQ-4: 3)
    num_vq_embeddings: int = 8192  # vq: codebook size Z (LDM-VQ-4: 8192)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every level's channels

    def __post_init__(self):
        self.kind = choice(Kind, self.kind, "model.kind")
        if (
            not self.block_out_channels
            or min(self.block_out_channels) < 1
            or self.layers_per_block < 1
            or self.latent_channels < 1
        ):
            raise UserError(
                "model.block_out_channels, model.layers_per_block and model.latent_channels must be positive"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise UserError(
                f"model.norm_num_groups={self.norm_num_groups} must divide every entry of model.block_out_channels"
            )
        if self.kind == Kind.vq and self.num_vq_embeddings < 2:
            raise UserError(f"model.num_vq_embeddings={self.num_vq_embeddings} must be >= 2")

    @property
    def downsampling_factor(self) -> int:
        """f: each level but the last halves the image."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class AutoencoderTrainConfig:
    """The reconstruction objective only: LDM adds LPIPS and a patch GAN, which are not implemented here."""

    steps: int = 20000  # optimiser steps (or set `epochs`)
    epochs: Optional[int] = None  # if set, steps = epochs x batches per epoch
    batch_size: int = 12  # images per step
    lr: float = 1e-4  # Adam learning rate, constant (taming/LDM: 4.5e-6 x batch size x GPUs)
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])  # Adam's (β1, β2), as taming/LDM
    recon_loss: ReconLoss = ReconLoss.l1  # pixel loss on [-1, 1] images: l1 | mse
    codebook_weight: float = 1.0  # vq: weight of the VQ loss (codebook term + 0.25 x commitment), taming's 1.0
    codebook_restart_every: int = 100  # vq: steps between restarts of codes unused since the last (0 = off)
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) || N(0, I)) (LDM-KL: 1e-6)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    log_every: int = 50  # steps between lines of metrics.jsonl

    def __post_init__(self):
        check_run_length(self)
        if self.log_every < 1:
            raise UserError(f"train.log_every={self.log_every} must be >= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"train.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.5, 0.9]")
        self.recon_loss = choice(ReconLoss, self.recon_loss, "train.recon_loss")
        if self.codebook_weight < 0 or self.kl_weight < 0 or self.codebook_restart_every < 0:
            raise UserError("train.codebook_weight, train.kl_weight and train.codebook_restart_every must be >= 0")


@dataclass
class AutoencoderExperiment:
    task: str = "autoencoder"  # the first stage of Latent Diffusion; train it with `sparsedm train-autoencoder`
    seed: int = 0  # seeds weights, data order and the KL posterior's samples
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self):
        factor = self.model.downsampling_factor
        if self.data.image_size % factor:
            raise UserError(
                f"data.image_size={self.data.image_size} is not divisible by the downsampling factor f={factor}"
            )


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

    def __post_init__(self):
        if self.encode_batch_size < 1:
            raise UserError(f"autoencoder.encode_batch_size={self.encode_batch_size} must be >= 1")
        if self.scaling_factor is not None and not self.scaling_factor > 0:
            raise UserError(
                f"autoencoder.scaling_factor={self.scaling_factor} must be > 0 (or null: the autoencoder's own)"
            )


def load_autoencoder_config(path: Optional[str], overrides=()) -> AutoencoderExperiment:
    """Schema defaults <- YAML <- overrides for `train-autoencoder`, checked."""
    cfg = load_config(path, overrides, AutoencoderExperiment)
    if cfg.task != "autoencoder":
        raise UserError(
            f"{path} is a task={cfg.task} config; train-autoencoder takes one such as configs/autoencoder_openmoji_cpu.yaml"
        )
    return cfg
