"""Settings of Latent Diffusion's first stage: the autoencoder's architecture (`sparsedm train-autoencoder`,
whose experiment schema is sparsedm.config.AutoencoderExperiment) and how a diffusion run uses a trained one
(the `autoencoder:` block of an `ldm` config).
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import List, Optional

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
