"""LSUN-Bedrooms (Yu et al., 2015): read from its LMDB release, or from a folder of exported images.

The official download is `bedroom_train_lmdb.zip`, which unpacks to `bedroom_train_lmdb/` holding
`data.mdb` and `lock.mdb`; each LMDB value is one encoded image (WebP in the release, JPEG after some
re-exports), keyed by an image id. LSUN's own `data.py export` turns it into a folder of .webp files,
which is read like any image folder. The paper trains on 10,598 images and validates on 2,500 of them.
"""

from pathlib import Path

import numpy as np

from sparsedm.data.images.config import CONFIG_KEY
from sparsedm.data.images.folder import ImageFiles, find_images
from sparsedm.data.images.transforms import decode_image
from sparsedm.errors import UserError

PAPER_SPLIT_SIZES = (10_598, 2_500)  # (train, val) images in the paper


def lsun_images(root):
    """An `ImageSource` for `root`: the LMDB reader if it holds `data.mdb`, else its image files."""
    root = Path(root).expanduser()
    if root.is_file() and root.name == "data.mdb":
        root = root.parent
    if (root / "data.mdb").is_file():
        return LmdbImages(root)
    return ImageFiles(find_images(root, "LSUN-Bedrooms folder"))


class LmdbImages:
    """Images stored as encoded bytes in an LMDB database, listed in key order.

    py-lmdb opens a database once per process, so the reader is kept only while the splits are decoded;
    dropping it closes the database.
    """

    def __init__(self, root: Path):
        try:
            import lmdb
        except ImportError:
            raise UserError(
                f"{root} is an LMDB database and reading it needs the lmdb package: pip install lmdb==3.0.0, "
                f"or export it to a folder of images (LSUN's `python data.py export`) and set {CONFIG_KEY}.path"
            ) from None
        self.root = root
        try:
            # Read-only and without the lock file: the release is never written, and its folder may be
            # read-only or shared by several jobs.
            self.env = lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False)
            with self.env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as error:
            raise UserError(f"cannot read the LMDB database in {root} ({error}); re-download or unzip it") from None
        if not self.keys:
            raise UserError(f"the LMDB database in {root} is empty; point {CONFIG_KEY}.path at bedroom_train_lmdb/")

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self, index: int) -> str:
        return f"{self.root}[{self.keys[index].decode(errors='replace')}]"

    def load(self, index: int, size: int) -> np.ndarray:
        with self.env.begin() as txn:
            data = txn.get(self.keys[index])
        return decode_image(data, size)
