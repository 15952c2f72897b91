"""Settings of Latent Diffusion's first stage: the autoencoder's architecture (`sparsedm train-autoencoder`,
whose experiment schema is sparsedm.config.AutoencoderExperiment) and how a diffusion run uses a trained one
(the `autoencoder:` block of an `ldm` config).
"""

from dataclasses import dataclass, field
from typing import List, Optional

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
class FirstStageConfig:
    """The frozen, dense autoencoder a Latent Diffusion run works in (never sparse, never trained there)."""

    path: Optional[str] = (
        None  # diffusers VQModel / AutoencoderKL folder: train-autoencoder's --out, or a pipeline's vqvae/
    )
    scaling_factor: Optional[float] = (
        None  # latents x this for the UNet; null = the folder's config.json value, else 1/std
    )
    encode_batch_size: int = 64  # images per encoder pass when the latents are cached
