"""Quick, Draw! loaders: the per-category `.ndjson` files and sketch-rnn's stroke-3 `.npz` files.

Published formats (https://github.com/googlecreativelab/quickdraw-dataset):
- `.ndjson`, one JSON object per line with a `drawing` field, a list of strokes:
  raw files:        `[[x0, ...], [y0, ...], [t0, ...]]` per stroke (the player's screen pixels, floats;
                    t in ms since the first point, ignored here);
  simplified files: `[[x0, x1, ...], [y0, y1, ...]]` per stroke (integers, aligned to the top-left corner
                    and scaled into 0-255, resampled and RDP-simplified).
  ChiroDiff trains on the raw files (`full/raw/<category>.ndjson`, its data/unpack_ndjson.py:5), which keep
  every pen sample before resampling: they are the recommended format; simplified files are still read.
  The two are told apart by content (a raw stroke has the third, timing, array), so `data.format=raw` or
  `simplified` picks one when a folder holds both for a category.
- sketch-rnn `.npz` (`sketchrnn/<category>.npz`): arrays `train`, `valid`, `test`, each an object array
  of (n, 3) int16 "stroke-3" rows (dx, dy, pen_lift) of the simplified drawings, pen_lift = 1 on the last
  point of a stroke. These are pickled object arrays: they are unpickled by `data_pickle.DataOnlyUnpickler`,
  which builds only numbers and numpy arrays, so a file cannot run code when loaded.
  The three published splits are pooled; `dataset.py` makes its own seeded split (as ChiroDiff did).

Every one of them is in screen coordinates, y growing downwards, as in sparsedm (`Y_AXIS`): the published
28 x 28 bitmaps were drawn from the simplified strokes with cairo and no flip (quickdraw-dataset issue #19),
and sketch-rnn's `draw_strokes` writes stroke-3 offsets into an SVG path as they are.

File names accepted for category "cat" (case and space/underscore differences ignored): `cat.ndjson`,
`full_simplified_cat.ndjson`, `full_raw_cat.ndjson`, `simplified_cat.ndjson`, `raw_cat.ndjson`, `cat.npz`,
`sketchrnn_cat.npz`, `cat.full.npz`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from sparsedm.data.strokes.data_pickle import read_npz_data_only
from sparsedm.data.strokes.sketch import LoadResult, Sketch, YAxis, choose_subset
from sparsedm.errors import UserError

# data.format -> the kinds of file it reads (`_file_kind`); "ndjson" is also the kind of an .ndjson file whose
# first line shows neither raw nor simplified strokes
FORMAT_KINDS = {
    "auto": ("raw", "simplified", "ndjson", "npz"),
    "ndjson": ("raw", "simplified", "ndjson"),
    "raw": ("raw",),
    "simplified": ("simplified",),
    "npz": ("npz",),
}
FORMATS = tuple(FORMAT_KINDS)
Y_AXIS = YAxis.down
_PREFIXES = ("full_simplified_", "full_raw_", "simplified_", "raw_", "sketchrnn_", "full_")
_NPZ_SPLITS = ("train", "valid", "test")


def _file_format(path: Path) -> str | None:
    return {".ndjson": "ndjson", ".npz": "npz"}.get(path.suffix.lower())


def _file_kind(path: Path) -> str | None:
    """'raw' or 'simplified' for an .ndjson file, by its first line's first stroke (3 arrays or 2); 'ndjson' if
    that line shows neither; 'npz'; None for any other file."""
    kind = _file_format(path)
    if kind != "ndjson":
        return kind
    with open(path, "rb") as f:
        line = f.readline()
    try:
        stroke = json.loads(line)["drawing"][0]
        return {2: "simplified", 3: "raw"}.get(len(stroke), "ndjson")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        return "ndjson"


def _category_key(name: str) -> str:
    """'full_simplified_The Eiffel Tower.ndjson' and 'the_eiffel_tower' both give 'the eiffel tower'."""
    name = name.lower()
    for suffix in (".full.npz", ".npz", ".ndjson"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return re.sub(r"[\s_]+", " ", name).strip()


def find_quickdraw_files(path: str, categories: list[str], fmt: str = "auto") -> list[Path]:
    """The files to read: `path` itself if it is a file, else one file per category found in the folder.

    With no categories, every QuickDraw file of the chosen format in the folder is read.
    """
    root = Path(path).expanduser()
    if fmt not in FORMATS:
        raise UserError(f"unknown QuickDraw format {fmt!r}; set data.format to one of {', '.join(FORMATS)}")
    if root.is_file():
        kind = _file_kind(root)
        if kind is None:
            raise UserError(f"{root} is neither .ndjson nor .npz; point data.path at QuickDraw files")
        if kind not in FORMAT_KINDS[fmt]:
            raise UserError(
                f"data.path is the file {root.name}, which holds {kind} drawings, but data.format={fmt}; "
                "set data.format=auto or point data.path at another file"
            )
        if categories and _category_key(root.name) not in {_category_key(c) for c in categories}:
            raise UserError(
                f"data.path is the file {root.name}, which is none of data.categories {list(categories)}; "
                "point data.path at the folder or clear data.categories"
            )
        return [root]
    if not root.is_dir():
        raise UserError(f"QuickDraw path {root} does not exist; set data.path to a folder of .ndjson/.npz files")

    by_key: dict[str, list[tuple[Path, str]]] = {}
    others = []  # QuickDraw files of another format than data.format
    for file in sorted(root.iterdir()):
        kind = _file_kind(file) if file.is_file() else None
        if kind in FORMAT_KINDS[fmt]:
            by_key.setdefault(_category_key(file.name), []).append((file, kind))
        elif kind is not None:
            others.append(f"{file.name} ({kind})")
    if not by_key and others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"no {fmt} QuickDraw files in {root}, only {shown}; set data.format=auto or download {fmt} files"
        )
    if not by_key:
        raise UserError(f"no QuickDraw .ndjson/.npz files in {root}; download them into that folder")

    wanted = [_category_key(c) for c in categories] or sorted(by_key)
    missing = [c for c, k in zip(categories, wanted) if k not in by_key]
    if missing:
        raise UserError(
            f"no file for categories {missing} in {root} (found: {', '.join(sorted(by_key))}); "
            "fix data.categories or download e.g. cat.ndjson"
        )
    files = []
    for key in wanted:
        found = by_key[key]
        if len(found) > 1:
            raise UserError(f"category {key!r} has {len(found)} files in {root}: {_which_one(found)}")
        files.append(found[0][0])
    return files


def _which_one(found: list[tuple[Path, str]]) -> str:
    """The files of one category and the data.format values that would each pick exactly one of them."""
    names = ", ".join(f"{file.name} ({kind})" for file, kind in found)
    kinds = sorted({kind for _, kind in found})
    picks = [k for k in kinds if sum(kind in FORMAT_KINDS[k] for _, kind in found) == 1]
    if not picks:
        return f"{names}; move all but one of them out of the folder"
    choices = " or ".join(f"data.format={k}" for k in picks)
    return f"{names}; set {choices}" + (" (ChiroDiff trained on raw)" if "raw" in picks else "")


def sketch_from_drawing(drawing) -> Sketch:
    """A `drawing` field (list of [xs, ys] or [xs, ys, ts]) to a Sketch; ValueError/TypeError if malformed."""
    if not isinstance(drawing, list):
        raise ValueError("drawing is not a list")
    strokes = []
    for stroke in drawing:
        if isinstance(stroke, np.ndarray):  # VMNIST's pickled records may hold arrays instead of lists
            stroke = stroke.tolist()
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise ValueError("stroke is not [xs, ys] or [xs, ys, ts]")
        xs, ys = np.asarray(stroke[0], dtype=np.float64), np.asarray(stroke[1], dtype=np.float64)
        if xs.ndim != 1 or xs.shape != ys.shape:
            raise ValueError("xs and ys differ in length")
        strokes.append(np.stack([xs, ys], axis=1))
    if not any(len(s) for s in strokes):
        raise ValueError("empty drawing")
    sketch = Sketch.from_strokes(strokes)
    if not np.isfinite(sketch.points).all():
        raise ValueError("non-finite coordinate")
    return sketch


def _sketch_from_stroke3(rows) -> Sketch:
    """sketch-rnn stroke-3 rows (dx, dy, pen_lift) to a Sketch; the last point always ends a stroke."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3 or len(rows) == 0:
        raise ValueError("not an (n, 3) stroke-3 array")
    if not np.isfinite(rows).all():
        raise ValueError("non-finite value")
    points = np.concatenate([np.cumsum(rows[:, :2], axis=0), (rows[:, 2:] > 0.5)], axis=1)
    points[-1, 2] = 1.0
    return Sketch(points)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _read_ndjson(path: Path, keep: set[int] | None, offset: int, out: LoadResult) -> None:
    """Parse the lines of `path` whose global index (offset + line number) is in `keep` (all when None)."""
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if (keep is not None and offset + i not in keep) or not line.strip():
                continue
            try:
                record = json.loads(line)
                out.add(sketch_from_drawing(record["drawing"]))
            except (json.JSONDecodeError, UnicodeDecodeError):
                out.skip("bad JSON line")
            except (KeyError, TypeError):
                out.skip("record without a drawing list")
            except ValueError as e:
                out.skip(f"bad drawing ({e})")


def _read_npz_records(path: Path) -> list:
    try:
        data = read_npz_data_only(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read {path} as .npz ({e}); re-download the file") from e
    splits = [s for s in _NPZ_SPLITS if s in data]
    if not splits:
        raise UserError(f"{path} has none of the arrays {_NPZ_SPLITS}; is it a sketch-rnn .npz file?")
    return [record for s in splits for record in data[s]]


def load_quickdraw(
    path: str, categories: list[str], fmt: str = "auto", max_items: int | None = None, seed: int = 0
) -> LoadResult:
    """Read the chosen categories; `max_items` keeps a seeded random subset of the records of all files."""
    files = find_quickdraw_files(path, categories, fmt)
    out = LoadResult(Y_AXIS)
    ndjson = [f for f in files if _file_format(f) == "ndjson"]
    npz_records = [r for f in files if _file_format(f) == "npz" for r in _read_npz_records(f)]

    # ndjson files can be gigabytes: count lines first, then parse only the chosen ones
    line_counts = [_count_lines(f) for f in ndjson] if max_items is not None else [0] * len(ndjson)
    total = sum(line_counts) + len(npz_records)
    keep = None if max_items is None else set(choose_subset(total, max_items, seed).tolist())
    offset = 0
    for file, n in zip(ndjson, line_counts):
        _read_ndjson(file, keep, offset, out)
        offset += n
    for i, record in enumerate(npz_records):
        if keep is not None and offset + i not in keep:
            continue
        try:
            out.add(_sketch_from_stroke3(record))
        except (ValueError, TypeError) as e:
            out.skip(f"bad stroke-3 array ({e})")
    return out.finish(f"QuickDraw ({', '.join(f.name for f in files)})")


def quickdraw_identity(path: str, categories: list[str], fmt: str) -> list:
    """What the cache key needs to know about the source: each file's absolute path, size and mtime."""
    files = find_quickdraw_files(path, categories, fmt)
    return [(os.path.abspath(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
