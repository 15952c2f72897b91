"""The image data settings: which data set, where it lives, what size, how it is split.

`ImageDataConfig` is a plain dataclass so that OmegaConf can hold it as a structured config and dotted
overrides (`data.name=celebahq data.path=/data/celeba_hq_256`) reach it. OmegaConf does not run
`__post_init__` on merges, only in `OmegaConf.to_object` once every override is in: it runs `check_config`.
"""

from dataclasses import dataclass
from typing import Optional

from sparsedm.errors import UserError

# Where this config sits in the project's config tree; error messages name keys with this prefix so a
# user can paste the fix straight onto the command line.
CONFIG_KEY = "data"

# The stand-in is named as such wherever a data set is shown, so no result on it reads like a paper number.
DATASET_DISPLAY_NAMES = {
    "openmoji": "openmoji (stand-in, not a paper data set)",
    "lsun_bedrooms": "LSUN-Bedrooms",
    "celebahq": "CelebA-HQ",
    "imagenette": "Imagenette",
    "folder": "image folder",
}


@dataclass
class ImageDataConfig:
    name: str = "openmoji"  # openmoji (built-in stand-in) | lsun_bedrooms | celebahq | imagenette | folder
    path: Optional[str] = None  # data set root on disk; unused for openmoji; e.g. "/data/imagenette2-320"
    image_size: int = 32  # pixels per side after centre crop + resize; 32 on CPU, 256 for full LDM runs
    train_size: Optional[int] = None  # training images; None = the data set's default (paper: CelebA-HQ 12500)
    val_size: Optional[int] = None  # validation images; None = the data set's default (paper: CelebA-HQ 500)
    split_seed: int = 0  # seed of the random train/val split; same seed, same files in each split
    max_items: Optional[int] = None  # cap on images per split after splitting; None = no cap; e.g. 256 on CPU
    cache_dir: str = ".cache/sparsedm"  # where the openmoji package and its rendered arrays are kept
    flip_p: float = (
        0.0  # ldm training: chance a sample is the image's mirror (LDM's LSUN loader: 0.5); validation never
    )

    def __post_init__(self):
        check_config(self)


def display_name(cfg) -> str:
    """The data set's name for logs, reports and plot titles (the stand-in says it is one)."""
    check_name(cfg.name)
    return DATASET_DISPLAY_NAMES[cfg.name]


def check_name(name: str) -> None:
    if name not in DATASET_DISPLAY_NAMES:
        valid = " | ".join(DATASET_DISPLAY_NAMES)
        raise UserError(f"unknown image data set {CONFIG_KEY}.name={name!r}; use one of: {valid}")


def check_config(cfg) -> None:
    """Raise `UserError` for values no loader can use. Takes the dataclass or an OmegaConf node."""
    check_name(cfg.name)
    if cfg.name != "openmoji" and not cfg.path:
        raise UserError(
            f"{CONFIG_KEY}.name={cfg.name} needs {CONFIG_KEY}.path: the folder that holds the images "
            f"(or {CONFIG_KEY}.name=openmoji for the built-in stand-in)"
        )
    if cfg.image_size < 8:
        raise UserError(f"{CONFIG_KEY}.image_size={cfg.image_size} is too small; use e.g. 32, 64 or 256")
    if not 0.0 <= cfg.flip_p <= 1.0:
        raise UserError(f"{CONFIG_KEY}.flip_p={cfg.flip_p} must be a probability in [0, 1], e.g. 0.5 (LSUN) or 0")
    for key in ("train_size", "val_size", "max_items"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"{CONFIG_KEY}.{key}={value} must be at least 1, or null for the default")
