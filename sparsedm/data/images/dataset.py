"""From an `ImageDataConfig` to the train and validation sets the training loop draws batches from.

Every data set becomes an `ImageSource` (a list of images that can be loaded one by one); a seeded
permutation picks the validation images first and the training images from the rest, so the two are
disjoint and the validation set stays the same when only train_size changes. A source whose images come in
groups of variants (`groups()`: OpenMoji's skin tones and genders) is split by whole groups, so no image is
held out while a recoloured copy of it is trained on. The chosen images are decoded once, centre-cropped and
resized, and held as uint8, which also serves FID's reference set.
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sparsedm.data.images import celebahq, lsun
from sparsedm.data.images.config import CONFIG_KEY, check_config, display_name
from sparsedm.data.images.folder import ImageFiles, find_images
from sparsedm.data.images.imagenette import imagenette_splits
from sparsedm.data.images.openmoji import openmoji_images
from sparsedm.data.images.transforms import UnreadableImage, to_model_tensor
from sparsedm.errors import UserError
from sparsedm.progress import progress_bar

log = logging.getLogger(__name__)

# (train, val) images the paper used; data sets without an entry hold out a tenth for validation.
# Bump when the images a split config selects change (2: OpenMoji split by variant groups); caches keyed by
# the data config (latents, FID statistics) include it.
SPLIT_RULE = 2
PAPER_SPLIT_SIZES = {"celebahq": celebahq.PAPER_SPLIT_SIZES, "lsun_bedrooms": lsun.PAPER_SPLIT_SIZES}


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def describe(self, index: int) -> str:
        """Where image `index` comes from, for log messages."""

    def load(self, index: int, size: int) -> np.ndarray:
        """Image `index` as size×size×3 uint8; raises `UnreadableImage` if it cannot be decoded."""


class ImageDataset(Dataset):
    """Square uint8 images held in memory; item i is a float32 3×H×W tensor in [-1, 1]."""

    def __init__(self, images: np.ndarray, name: str, skipped: int = 0, groups: Optional[Sequence[str]] = None):
        self.images = images  # (N, H, W, 3) uint8, e.g. for FID reference statistics
        self.name = name  # e.g. "CelebA-HQ train"
        self.skipped = skipped  # unreadable files left out of this split
        self.groups = groups  # per image, its variant group (OpenMoji), or None: the memorisation test reads it

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_tensor(self.images[index])


def load_image_splits(cfg, progress: bool | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The (train, val) datasets `cfg` describes, decoded and resized to cfg.image_size; progress: a bar
    while decoding (None: on a terminal only)."""
    check_config(cfg)
    name = display_name(cfg)
    if cfg.name == "imagenette":
        train_source, val_source = imagenette_splits(cfg.path)
        train_index = _subset(len(train_source), cfg.train_size, cfg.split_seed, "train_size", "train/")
        val_index = _subset(len(val_source), cfg.val_size, cfg.split_seed, "val_size", "val/")
        groups = None
    else:
        train_source = val_source = _single_source(cfg)
        paper = PAPER_SPLIT_SIZES.get(cfg.name)
        train_size, val_size = split_sizes(len(train_source), cfg.train_size, cfg.val_size, paper, name)
        groups = train_source.groups() if hasattr(train_source, "groups") else None
        if groups is None:
            train_index, val_index = split_indices(len(train_source), train_size, val_size, cfg.split_seed)
        else:
            train_index, val_index = split_groups(groups, train_size, val_size, cfg.split_seed, name)
    if cfg.max_items is not None:
        # Index arrays are still in random order here, so a prefix is a random subset of the split.
        train_index, val_index = train_index[: cfg.max_items], val_index[: cfg.max_items]
    train = _decode(train_source, np.sort(train_index), cfg.image_size, f"{name} train", progress, groups)
    val = _decode(val_source, np.sort(val_index), cfg.image_size, f"{name} val", progress, groups)
    log.info("%s: %d train / %d val images at %d px", name, len(train), len(val), cfg.image_size)
    return train, val


def _single_source(cfg) -> ImageSource:
    if cfg.name == "openmoji":
        return openmoji_images(cfg.image_size, cfg.cache_dir)
    if cfg.name == "lsun_bedrooms":
        return lsun.lsun_images(cfg.path)
    if cfg.name == "celebahq":
        return celebahq.celebahq_images(cfg.path)
    return ImageFiles(find_images(cfg.path))


def split_sizes(
    available: int,
    train_size: Optional[int],
    val_size: Optional[int],
    paper: Optional[tuple[int, int]],
    name: str,
) -> tuple[int, int]:
    """(train, val) counts: as asked, else the paper's (scaled down if fewer are available), else 90/10."""
    if available < 2:
        raise UserError(f"{name} has {available} image(s); a train/val split needs at least 2")
    if paper is None:
        val = val_size if val_size is not None else max(1, available // 10)
        train = train_size if train_size is not None else available - val
    else:
        train = train_size if train_size is not None else paper[0]
        val = val_size if val_size is not None else paper[1]
        if train + val > available and train_size is None and val_size is None:
            val = max(1, round(available * paper[1] / sum(paper)))
            train = available - val
            log.warning(
                "%s has %d images, fewer than the paper's %d train + %d val; using %d train + %d val (same ratio)",
                name, available, paper[0], paper[1], train, val,
            )  # fmt: skip
    if train < 1 or train + val > available:
        raise UserError(
            f"{name} has {available} images, too few for {train} train + {val} val; "
            f"lower {CONFIG_KEY}.train_size / {CONFIG_KEY}.val_size or leave them unset"
        )
    return train, val


def split_indices(available: int, train_size: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random (train, val) index arrays; val is drawn first so it ignores train_size."""
    order = np.random.default_rng(seed).permutation(available)
    return order[val_size : val_size + train_size], order[:val_size]


def split_groups(
    groups: Sequence[str], train_size: int, val_size: int, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, val) index arrays that never part a group: whole groups, in a seeded random order, fill
    val (a group that would overfill it is passed over), the rest of the groups give train in the same order."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = np.random.default_rng(seed).permutation(len(members))
    in_order = [members[key] for key in (list(members)[i] for i in order)]
    val: list[int] = []
    rest: list[int] = []
    for group in in_order:
        (val if len(val) + len(group) <= val_size else rest).extend(group)
    if len(val) < val_size:
        raise UserError(
            f"{name}: whole groups of variants give only {len(val)} of {CONFIG_KEY}.val_size={val_size} "
            f"validation images; lower {CONFIG_KEY}.val_size"
        )
    return np.array(rest[:train_size], dtype=np.int64), np.array(val, dtype=np.int64)


def _subset(available: int, size: Optional[int], seed: int, key: str, what: str) -> np.ndarray:
    """A seeded random choice of `size` indices (all of them if None), in random order."""
    if size is not None and size > available:
        raise UserError(f"{CONFIG_KEY}.{key}={size} but {what} holds {available} images; lower it or leave it unset")
    return np.random.default_rng(seed).permutation(available)[:size]


def _decode(
    source: ImageSource,
    indices: np.ndarray,
    size: int,
    name: str,
    progress: bool | None,
    groups: Optional[Sequence[str]] = None,
) -> ImageDataset:
    """The images of `indices`, less unreadable ones; `groups`: every source image's group, kept for those loaded."""

    def load(index: int) -> Optional[np.ndarray]:
        try:
            return source.load(int(index), size)
        except UnreadableImage as error:
            log.warning("skipping unreadable image %s: %s", source.describe(int(index)), error)
            return None

    # Filled in place rather than stacked from a list: at 256 px the paper's splits take gigabytes.
    images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    loaded, kept = 0, []
    # Pillow decodes and resizes with the GIL released, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        disable = None if progress is None else not progress
        for index, image in zip(
            indices,
            progress_bar(
                pool.map(load, indices),
                total=len(indices),
                desc=f"decode {name}",
                unit="img",
                disable=disable,
                dynamic_ncols=True,
            ),
        ):
            if image is not None:
                images[loaded] = image
                loaded += 1
                kept.append(int(index))
    skipped = len(indices) - loaded
    if skipped:
        log.warning("%s: skipped %d unreadable of %d images", name, skipped, len(indices))
    if not loaded:
        raise UserError(f"{name}: none of its {len(indices)} images could be read; check that the files are images")
    kept_groups = [groups[i] for i in kept] if groups is not None else None
    return ImageDataset(images[:loaded], name, skipped, kept_groups)
