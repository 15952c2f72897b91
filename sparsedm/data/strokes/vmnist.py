"""VectorMNIST (VMNIST, from SketchODE / ChiroDiff, Das et al.) as one pickle per drawing.

The authors distribute VMNIST (and their KanjiVG copy) as "unpacked" files, the layout their
`unpack_ndjson.py` writes and their `data/qd.py` reads: a folder, optionally with one subfolder per class
(and possibly `train/` / `test/` below it), holding one pickle file per drawing, named `sketch_<i>`
(no extension). A published copy (AnonymousMorris/handwriting_generation, `data/<digit>/<i>.pkl`,
10,575 files) was read to check the format: each pickle (protocol 4, plain lists of floats) is a dict whose
`drawing` is a list of 1 to 3 strokes `[[x...], [y...], [t...]]`; the first point is (0, 0), the farthest
point is at distance 10 (the files are already ChiroDiff-normalised, so the units are arbitrary) and `t`
runs from 0 to 1 over the drawing (it is ignored). Its y axis points UP: all 1,000 of its 1s are drawn top
to bottom and end at a smaller y than they start. `Y_AXIS` says so; `LoadResult.add` flips it to y down.

The loader accepts the variations the authors' code would (any nesting depth, `.pkl` / `.pickle` suffixes,
a bare drawing list instead of a dict). Pickles are read with an unpickler that only builds plain
containers, numbers, strings and numpy arrays, so a file cannot run code when loaded.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

from sparsedm.data.strokes.data_pickle import DataOnlyUnpickler
from sparsedm.data.strokes.quickdraw import sketch_from_drawing
from sparsedm.data.strokes.sketch import LoadResult, YAxis, choose_subset
from sparsedm.errors import UserError

_SUFFIXES = ("", ".pkl", ".pickle")
Y_AXIS = YAxis.up  # measured on the published pickles (see above); ChiroDiff draws them with matplotlib, y up
READER_VERSION = 2  # 2: y flipped to point down (1 read every drawing upside down); in the cache and FID keys


def find_vmnist_files(path: str) -> list[Path]:
    """Every drawing file under `path`, in sorted (deterministic) order."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"VMNIST path {root} is not a folder; point data.path at the unpacked VMNIST folder")
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files.extend(
            Path(folder) / n for n in sorted(names) if not n.startswith(".") and Path(n).suffix.lower() in _SUFFIXES
        )
    if not files:
        raise UserError(f"no drawing files (sketch_<i> pickles) under {root}; is this the unpacked VMNIST folder?")
    return files


def load_vmnist(path: str, max_items: int | None = None, seed: int = 0) -> LoadResult:
    """Read the unpacked VMNIST files; `max_items` keeps a seeded random subset of the files."""
    files = find_vmnist_files(path)
    out = LoadResult(Y_AXIS)
    for i in choose_subset(len(files), max_items, seed):
        try:
            # latin1: pickles written by Python 2 store numpy buffers as byte strings
            record = DataOnlyUnpickler(io.BytesIO(files[i].read_bytes()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError):
            out.skip("not a readable pickle")
            continue
        drawing = record.get("drawing") if isinstance(record, dict) else record
        try:
            out.add(sketch_from_drawing(drawing))
        except (ValueError, TypeError) as e:
            out.skip(f"bad drawing ({e})")
    return out.finish(f"VMNIST ({path})")


def vmnist_identity(path: str) -> list:
    """Cache-key material: the reader's version, the folder and its files' count, total size and newest mtime."""
    stats = [f.stat() for f in find_vmnist_files(path)]
    return [
        READER_VERSION,
        os.path.abspath(path),
        len(stats),
        sum(s.st_size for s in stats),
        max(s.st_mtime_ns for s in stats),
    ]
