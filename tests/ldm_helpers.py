"""Tiny Latent Diffusion fixtures: a folder of 16 px shape images, a tiny autoencoder trained on it, and the
overrides that shrink configs/ldm_openmoji_cpu.yaml to seconds."""

import numpy as np
from PIL import Image

from sparsedm.config import load_autoencoder_config
from sparsedm.tasks.autoencoder import read_autoencoder_metrics
from sparsedm.train.trainer import Trainer

SIZE = 16  # pixels; f = 4 gives 4 x 4 latents


def write_shapes(folder, count: int = 72, size: int = SIZE, seed: int = 0):
    """Coloured squares and discs on white at random places: structure an autoencoder learns in seconds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.full((size, size, 3), 255, dtype=np.uint8)
        cy, cx = rng.integers(4, size - 4, 2)
        r = rng.integers(3, 5)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if i % 2 else (abs(yy - cy) < r) & (abs(xx - cx) < r)
        image[inside] = rng.integers(0, 200, 3)
        Image.fromarray(image).save(folder / f"shape_{i:03d}.png")
    return folder


def data_overrides(images, cache) -> list:
    return ["data.name=folder", f"data.path={images}", f"data.image_size={SIZE}", f"data.cache_dir={cache}"]


def train_tiny_autoencoder(images, cache, out, kind: str = "vq", steps: int = 60, extra=()) -> dict | None:
    """Its metrics.json, or None when `extra` stops it before the end (train.stop_at)."""
    cfg = load_autoencoder_config(
        "configs/autoencoder_openmoji_cpu.yaml",
        [
            *data_overrides(images, cache),
            f"model.kind={kind}",
            "model.block_out_channels=[8,16,16]",
            "model.norm_num_groups=4",
            "model.num_vq_embeddings=64",
            f"train.steps={steps}",
            "train.batch_size=16",
            "train.lr=3e-3",
            "train.log_every=10",
            *extra,
        ],
    )
    if Trainer(cfg, out, progress=False).fit() is None:
        return None
    return read_autoencoder_metrics(out)


def short_run_overrides() -> list:
    """What every tiny latent-diffusion run of the tests shares: small batches, few logs and sampling steps."""
    return [
        "autoencoder.encode_batch_size=8",
        "train.batch_size=16",
        "train.log_every=10",
        "train.checkpoint_every=1000",
        "train.val_batches=1",
        "sample.steps=5",
    ]


def ldm_overrides(images, cache, autoencoder) -> list:
    """configs/ldm_openmoji_cpu.yaml shrunk: a 2-level UNet of 16/32 channels on 3 x 4 x 4 latents."""
    return [
        *data_overrides(images, cache),
        f"autoencoder.path={autoencoder}",
        "model.base_channels=16",
        "model.channel_mult=[1,2]",
        "model.layers_per_block=1",
        "model.attention_resolutions=[2]",
        "model.attention_head_dim=8",
        "model.norm_num_groups=8",
        *short_run_overrides(),
        "sparse.update_interval=10",
    ]


def dit_overrides(images, cache, autoencoder) -> list:
    """configs/dit_openmoji_cpu.yaml shrunk: a DiT of 2 blocks, hidden 32 in 2 heads, patch 2 on 3 x 4 x 4 latents."""
    return [
        *data_overrides(images, cache),
        f"autoencoder.path={autoencoder}",
        "model.hidden_size=32",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.patch_size=2",
        *short_run_overrides(),
        "sample.num=8",
        "sparse.update_interval=5",
    ]
