"""LSUN-Bedrooms (Yu et al., 2015): read from its LMDB release, or from a folder of exported images.

The official download is `bedroom_train_lmdb.zip`, which unpacks to `bedroom_train_lmdb/` holding
`data.mdb` and `lock.mdb`; each LMDB value is one encoded image (WebP in the release, JPEG after some
re-exports), keyed by an image id. LSUN's own `data.py export` turns it into a folder of .webp files,
which is read like any image folder. The paper trains on 10,598 images and validates on 2,500 of them.

A folder that holds no images but LMDB folders (the parent of `bedroom_train_lmdb/`, often beside
`bedroom_val_lmdb/`) is refused with the path it likely meant, not read: which LMDB holds the training
images is the user's choice, and a configured path is used as given.
"""

from pathlib import Path

import numpy as np

from sparsedm.data.images.config import CONFIG_KEY
from sparsedm.data.images.folder import ImageFiles, find_images, refuse_archive
from sparsedm.data.images.transforms import decode_image
from sparsedm.errors import UserError

PAPER_SPLIT_SIZES = (10_598, 2_500)  # (train, val) images in the paper


def lsun_images(root):
    """An `ImageSource` for `root`: the LMDB reader if it holds `data.mdb`, else its image files."""
    root = Path(root).expanduser()
    if root.is_file() and root.name == "data.mdb":
        root = root.parent
    refuse_archive(root, "LSUN-Bedrooms path")
    if (root / "data.mdb").is_file():
        return LmdbImages(root)
    try:
        return ImageFiles(find_images(root, "LSUN-Bedrooms folder"))
    except UserError:
        lmdbs = sorted(d for d in root.iterdir() if (d / "data.mdb").is_file()) if root.is_dir() else []
        if not lmdbs:
            raise
        meant = next((d for d in lmdbs if "train" in d.name), lmdbs[0])
        raise UserError(
            f"LSUN-Bedrooms folder {root} holds no images but the LMDB folder(s) {', '.join(d.name for d in lmdbs)}; "
            f"did you mean {CONFIG_KEY}.path={meant}?"
        ) from None


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
            # read-only or shared by several jobs. max_dbs=1 leaves room to open a key as a named sub-database.
            self.env = lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False, max_dbs=1)
            with self.env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
                named = bool(self.keys) and _names_a_database(self.env, txn, self.keys[0], lmdb.IncompatibleError)
        except lmdb.Error as error:
            raise UserError(f"cannot read the LMDB database in {root} ({error}); re-download or unzip it") from None
        if not self.keys or named:
            self.env.close()  # a refused database is not left open for the rest of the process
        if not self.keys:
            raise UserError(f"the LMDB database in {root} is empty; point {CONFIG_KEY}.path at bedroom_train_lmdb/")
        if named:
            names = ", ".join(repr(k.decode(errors="replace")) for k in self.keys[:3])
            raise UserError(
                f"the LMDB database in {root} holds the named sub-database(s) {names}, not images in its main "
                "database as LSUN's release does; export those images to a folder and set "
                f"{CONFIG_KEY}.path to it"
            )

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self, index: int) -> str:
        return f"{self.root}[{self.keys[index].decode(errors='replace')}]"

    def load(self, index: int, size: int) -> np.ndarray:
        with self.env.begin() as txn:
            data = txn.get(self.keys[index])
        return decode_image(data, size)


def _names_a_database(env, txn, key: bytes, incompatible: type[Exception]) -> bool:
    """Whether `key` of the main database names a sub-database (its value is then LMDB's record of that
    database, not an image); `incompatible` is lmdb's error for a plain key. The first key tells: LMDB keeps
    a database's names in its main database, and LSUN's release has none."""
    try:
        env.open_db(key, txn=txn, create=False)
    except incompatible:
        return False
    return True
