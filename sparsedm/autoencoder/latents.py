"""Latents of an image data set under a frozen autoencoder, encoded once and cached on disk.

The cache file is named by a hash of the autoencoder's identity (its config and weights) and of the data
settings that choose and size the images, so any change to either encodes again, and every run and epoch
after the first reads the file instead of running the encoder. Latents are stored unscaled (the scaling
factor is the run's choice). Change the image files under an unchanged config and the cache is stale:
delete `<data.cache_dir>/latents/`. Under torchrun rank 0 encodes while the other ranks wait (the trainer's
`main_process_first`); the atomic rename keeps the file whole where several nodes fill their own caches.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from sparsedm.autoencoder.model import FirstStage, encode
from sparsedm.data.images import ImageDataset, load_image_splits
from sparsedm.data.images.dataset import SPLIT_RULE
from sparsedm.progress import progress_bar
from sparsedm.runs.files import check_fields, read_npz

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored arrays change meaning
DATA_KEYS = ("name", "path", "image_size", "train_size", "val_size", "split_seed", "max_items")


class LatentDataset(Dataset):
    """Item i: {"mean": C x h x w} and, for a KL autoencoder, {"std": C x h x w} of the posterior; with mirrors
    (`data.flip_p` > 0, training split) also "mirrored_mean" (and "mirrored_std"): the latent of the image's mirror."""

    def __init__(
        self,
        mean: torch.Tensor,
        std: Optional[torch.Tensor] = None,
        mirrored_mean: Optional[torch.Tensor] = None,
        mirrored_std: Optional[torch.Tensor] = None,
    ):
        self.mean, self.std = mean, std
        self.mirrored_mean, self.mirrored_std = mirrored_mean, mirrored_std

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = {"mean": self.mean[index]}
        for key in ("std", "mirrored_mean", "mirrored_std"):
            value = getattr(self, key)
            if value is not None:
                item[key] = value[index]
        return item


def cache_path(data_cfg, first_stage: FirstStage) -> Path:
    data = {key: getattr(data_cfg, key) for key in DATA_KEYS}
    if data["path"]:
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    data["split_rule"] = SPLIT_RULE
    key = json.dumps({"version": CACHE_VERSION, "autoencoder": first_stage.identity, "data": data}, sort_keys=True)
    return Path(data_cfg.cache_dir).expanduser() / "latents" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


@torch.no_grad()
def encode_images(model, images: ImageDataset, device, batch_size: int, progress: bool | None = None):
    """(mean, std or None) of `model`'s latents as float32 CPU tensors for every image of the split; progress
    None: on a terminal."""
    means, stds = [], []
    for start in progress_bar(
        range(0, len(images), batch_size),
        desc=f"encode {images.name}",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    ):
        x = torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]).to(device)
        mean, std = encode(model, x)
        means.append(mean.float().cpu())
        stds.append(std.float().cpu() if std is not None else None)
    return torch.cat(means), (torch.cat(stds) if stds[0] is not None else None)


def mirror_cache_path(path: Path) -> Path:
    """Where the latents of the training images' mirrors are kept, next to the split's own latents."""
    return path.with_name(f"{path.stem}.mirrored.npz")


def _write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(scratch, "wb") as f:
        np.savez(f, **arrays)
    os.replace(scratch, path)
    log.info("latents cached in %s", path)


def cached_latents(
    data_cfg, first_stage: FirstStage, device, batch_size: int, progress: bool | None = None
) -> Tuple[LatentDataset, LatentDataset]:
    """(train, val) latents of `data_cfg` under `first_stage`: from the cache, or encoded now and cached.

    With `data_cfg.flip_p` > 0 the training set also carries the latents of each image's left-right mirror
    (an encoder is not mirror-equivariant, so the mirror is encoded, not the latent flipped); they are cached
    in a second file, so runs with and without flips share the first.
    """
    path = cache_path(data_cfg, first_stage)
    mirror_path = mirror_cache_path(path) if data_cfg.flip_p > 0 else None
    missing = [p for p in (path, mirror_path) if p is not None and not p.is_file()]
    if missing:
        splits = load_image_splits(data_cfg, progress)
        model = first_stage.load(device)
        if path in missing:
            arrays = {}
            for split, images in zip(("train", "val"), splits):
                mean, std = encode_images(model, images, device, batch_size, progress)
                arrays[f"{split}_mean"] = mean.numpy()
                if std is not None:
                    arrays[f"{split}_std"] = std.numpy()
            _write_npz(path, arrays)
        if mirror_path in missing:
            train = splits[0]
            mirrors = ImageDataset(np.ascontiguousarray(train.images[:, :, ::-1]), f"{train.name} mirrored")
            mean, std = encode_images(model, mirrors, device, batch_size, progress)
            _write_npz(
                mirror_path, {"train_mean": mean.numpy(), **({"train_std": std.numpy()} if std is not None else {})}
            )
        first_stage.release()
    if path not in missing:
        log.info("latents read from %s", path)
    arrays = read_npz(path, "it is a cache of encoded latents: delete it to encode them again")
    for split in ("train", "val"):
        check_fields(arrays, {f"{split}_mean": np.ndarray}, str(path), "delete it to encode the latents again")
    train, val = (
        LatentDataset(
            torch.from_numpy(arrays[f"{split}_mean"]),
            torch.from_numpy(arrays[f"{split}_std"]) if f"{split}_std" in arrays else None,
        )
        for split in ("train", "val")
    )
    if mirror_path is not None:
        mirrored = read_npz(mirror_path, "it is a cache of encoded latents: delete it to encode them again")
        check_fields(mirrored, {"train_mean": np.ndarray}, str(mirror_path), "delete it to encode the latents again")
        train.mirrored_mean = torch.from_numpy(mirrored["train_mean"])
        train.mirrored_std = torch.from_numpy(mirrored["train_std"]) if "train_std" in mirrored else None
    return train, val


def latent_std(latents: LatentDataset) -> float:
    """Standard deviation of z over all entries; for a KL posterior, of its samples (var of mean + mean var)."""
    variance = latents.mean.double().var()
    if latents.std is not None:
        variance = variance + latents.std.double().pow(2).mean()
    return float(variance.sqrt())
