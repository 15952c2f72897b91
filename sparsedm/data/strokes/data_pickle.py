"""Pickled stroke data read without running code: an unpickler that builds only plain containers, numbers,
strings and numpy arrays, for VMNIST's per-drawing pickles and sketch-rnn's object-array `.npz` files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

# what numpy (1.x and 2.x, pickle protocols 2-5) needs to rebuild an ndarray; any other callable is refused
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_npz_data_only(path: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file; object arrays are unpickled by `DataOnlyUnpickler` (latin1: the published
    sketch-rnn files were written by Python 2). Raises zipfile.BadZipFile, ValueError, EOFError or
    pickle.UnpicklingError for a damaged or foreign file."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in (m for m in archive.namelist() if m.endswith(".npy")):
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                dtype = read_header(f)[2]
                if dtype.hasobject:  # the rest of the member is the pickled array
                    arrays[member[: -len(".npy")]] = np.asarray(DataOnlyUnpickler(f, encoding="latin1").load())
                    continue
            with archive.open(member) as f:
                arrays[member[: -len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays
