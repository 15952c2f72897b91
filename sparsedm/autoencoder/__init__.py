"""Latent Diffusion's first stage: a VQ (LDM-VQ-4) or KL autoencoder, trained on reconstruction, then frozen.

    sparsedm train-autoencoder configs/autoencoder_openmoji_cpu.yaml --out runs/ae   # writes a diffusers folder
    first_stage = FirstStage("runs/ae")                                             # config.json only
    train, val = cached_latents(cfg.data, first_stage, device, batch_size=64)        # encoded once, then cached

Layout: config (settings), model (build, load, encode, decode), latents (the cache), objective (the training
loss), codebook (VQ restarts), reconstruction (error and picture). The training loop is sparsedm.train's, with
the task sparsedm.tasks.autoencoder.
"""

from sparsedm.autoencoder.config import AutoencoderConfig, FirstStageConfig
from sparsedm.autoencoder.latents import LatentDataset, cached_latents, latent_std
from sparsedm.autoencoder.model import FirstStage, build_autoencoder, decode, encode

__all__ = [
    "AutoencoderConfig",
    "FirstStage",
    "FirstStageConfig",
    "LatentDataset",
    "build_autoencoder",
    "cached_latents",
    "decode",
    "encode",
    "latent_std",
]
