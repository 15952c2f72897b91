"""Latent Diffusion's first stage: a VQ (LDM-VQ-4) or KL autoencoder, trained on reconstruction, then frozen.

    sparsedm train-autoencoder configs/autoencoder_openmoji_cpu.yaml --out runs/ae   # writes a diffusers folder
    first_stage = FirstStage("runs/ae")                                             # config.json only
    train, val = cached_latents(cfg.data, first_stage, device, batch_size=64)        # encoded once, then cached

Layout: config (settings), model (build, load, encode, decode), latents (the cache), train (the loop).
"""

from sparsedm.autoencoder.config import (
    AutoencoderConfig,
    AutoencoderExperiment,
    AutoencoderTrainConfig,
    FirstStageConfig,
    load_autoencoder_config,
)
from sparsedm.autoencoder.latents import LatentDataset, cached_latents, latent_std
from sparsedm.autoencoder.model import FirstStage, build_autoencoder, decode, encode
from sparsedm.autoencoder.train import train_autoencoder

__all__ = [
    "AutoencoderConfig",
    "AutoencoderExperiment",
    "AutoencoderTrainConfig",
    "FirstStage",
    "FirstStageConfig",
    "LatentDataset",
    "build_autoencoder",
    "cached_latents",
    "decode",
    "encode",
    "latent_std",
    "load_autoencoder_config",
    "train_autoencoder",
]
