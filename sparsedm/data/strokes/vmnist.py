"""VectorMNIST (VMNIST, from SketchODE / ChiroDiff, Das et al.) in its published "unpacked" layout.

The authors distribute VMNIST (and their KanjiVG copy) as "unpacked" files, the layout their
`unpack_ndjson.py` writes and their `data/qd.py` reads: a folder, optionally with one subfolder per class
(and possibly `train/` / `test/` below it), holding one pickle file per drawing, named `sketch_<i>`
(no extension). Each pickle is the dict of a Quick, Draw! ndjson record; its `drawing` field is a list of
strokes `[[x...], [y...], [t...]]` (the time row may be absent and is ignored).

This layout is inferred from the authors' code, not from a format specification; the loader accepts the
variations that code would (any nesting depth, `.pkl` / `.pickle` suffixes, a bare drawing list instead
of a dict). Pickles are read with an unpickler that only builds plain containers, numbers, strings and
numpy arrays, so a file cannot run code when loaded.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

from sparsedm.data.strokes.data_pickle import DataOnlyUnpickler
from sparsedm.data.strokes.quickdraw import sketch_from_drawing
from sparsedm.data.strokes.sketch import LoadResult, choose_subset
from sparsedm.errors import UserError

_SUFFIXES = ("", ".pkl", ".pickle")


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
    out = LoadResult()
    for i in choose_subset(len(files), max_items, seed):
        try:
            # latin1: pickles written by Python 2 store numpy buffers as byte strings
            record = DataOnlyUnpickler(io.BytesIO(files[i].read_bytes()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError):
            out.skip("not a readable pickle")
            continue
        drawing = record.get("drawing") if isinstance(record, dict) else record
        try:
            out.sketches.append(sketch_from_drawing(drawing))
        except (ValueError, TypeError) as e:
            out.skip(f"bad drawing ({e})")
    return out.finish(f"VMNIST ({path})")


def vmnist_identity(path: str) -> list:
    """Cache-key material: the folder and its files' count, total size and newest mtime."""
    stats = [f.stat() for f in find_vmnist_files(path)]
    return [os.path.abspath(path), len(stats), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)]
