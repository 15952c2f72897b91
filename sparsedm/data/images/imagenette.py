"""Imagenette (Howard, 2019): ten ImageNet classes, shipped with its own train/val split.

The published archives (imagenette2.tgz, imagenette2-320.tgz, imagenette2-160.tgz) unpack to
`imagenette2-320/train/n01440764/*.JPEG` and `imagenette2-320/val/n01440764/*.JPEG`: one folder per
WordNet class id under each split. The paper keeps that split, so no seed decides which file is in val.
Class labels are not read: the paper's models are unconditional.
"""

from pathlib import Path

from sparsedm.data.images.config import CONFIG_KEY
from sparsedm.data.images.folder import ImageFiles, find_images, refuse_archive
from sparsedm.errors import UserError

LAYOUT = "imagenette2-320/{train,val}/<class id>/*.JPEG"


def imagenette_splits(root) -> tuple[ImageFiles, ImageFiles]:
    """The train/ and val/ images under `root`, each sorted by class folder then file name."""
    root = Path(root).expanduser()
    refuse_archive(root, "Imagenette folder")
    if not root.is_dir():
        raise UserError(f"Imagenette folder {root} does not exist; point {CONFIG_KEY}.path at the unpacked {LAYOUT}")
    splits = []
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir() or not any(d.is_dir() for d in split_dir.iterdir()):
            raise UserError(
                f"Imagenette folder {root} has no {split}/ class folders; expected the layout {LAYOUT} "
                f"and {CONFIG_KEY}.path pointing at the folder that holds train/ and val/"
            )
        splits.append(ImageFiles(find_images(split_dir, f"Imagenette {split} folder")))
    return splits[0], splits[1]
