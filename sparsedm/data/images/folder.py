"""A folder of image files, searched recursively: the format of CelebA-HQ, exported LSUN and user data.

Files are listed in sorted path order so that a split seed picks the same files on every machine,
whatever order the file system returns them in.
"""

from pathlib import Path

import numpy as np

from sparsedm.data.images.transforms import UnreadableImage, decode_image
from sparsedm.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# how the data sets ship (imagenette2-320.tgz, bedroom_train_lmdb.zip) and the command that unpacks each
ARCHIVES = {
    ".tar.gz": "tar xzf {0} -C {1}",
    ".tgz": "tar xzf {0} -C {1}",
    ".tar": "tar xf {0} -C {1}",
    ".zip": "unzip {0} -d {1}",
}


def refuse_archive(root: Path, what: str) -> None:
    """Raise a `UserError` saying how to extract it when `root` is a downloaded archive, or does not exist while
    the archive it would be unpacked from lies next to it; else return."""
    if root.exists():
        candidates = [root] if root.is_file() else []
    else:
        candidates = [root.with_name(root.name + suffix) for suffix in ARCHIVES]
    for archive in candidates:
        suffix = next((s for s in ARCHIVES if archive.name.lower().endswith(s)), None)
        if suffix is not None and archive.is_file():
            where = f"{root} is an archive" if archive == root else f"{root} does not exist, but {archive.name} does"
            extract = ARCHIVES[suffix].format(archive, archive.parent)
            raise UserError(f"{what} {where}: extract it first ({extract}) and set the path to the folder it makes")


def find_images(root, what: str = "image folder") -> list[Path]:
    """All .jpg/.jpeg/.png/.webp files under `root` (any depth, any case of suffix), sorted.

    `what` names the data set in error messages, e.g. "CelebA-HQ folder".
    """
    root = Path(root).expanduser()
    refuse_archive(root, what)
    if not root.is_dir():
        raise UserError(f"{what} {root} does not exist or is not a folder; check the path")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        suffixes = "/".join(IMAGE_SUFFIXES)
        raise UserError(f"{what} {root} holds no {suffixes} images; point the path at the images themselves")
    return paths


class ImageFiles:
    """Image files read on demand; satisfies the `ImageSource` protocol of `dataset.py`."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def load(self, index: int, size: int) -> np.ndarray:
        try:
            data = self.paths[index].read_bytes()
        except OSError as error:
            raise UnreadableImage(error.strerror or str(error)) from error
        return decode_image(data, size)
