"""KanjiVG loader: one SVG per character, one `<path>` per stroke, in stroke order.

KanjiVG (https://kanjivg.tagaini.net, CC BY-SA 3.0) ships `kanji/<5-hex-digit code>[-<variant>].svg` files
with a 109 x 109 viewBox. Each stroke is a `<path id="kvg:04e00-s1" d="M...c...">` of cubic Béziers; the
`-sN` suffix is the stroke number. Paths are sampled into polylines (`_POINTS_PER_CURVE` points per Bézier
segment; the arc-length resampling in `preprocess.py` sets the final density). Coordinates are SVG user
units, so y grows downwards, as in sparsedm.

Releases before 2012 (KanjiVG's repository until its "Remove obsolete files" commit of 2012-04-01) kept
the same drawings in `SVG/<4-hex-digit code>[-<variant>].svg`, 5 digits only above U+FFFF (`4e00.svg`,
`2008a.svg`, `4e00-Kaisho.svg`: 6,660 characters and 4,853 variants), with stroke paths in drawing order
but without ids. Both namings are base characters here; a folder holding one character under both names
(two releases mixed) is refused.

Without `data.path` the files come from the `kanjivg` PyPI package, which installs the `kanji/` folder at
the top of site-packages; it is located through the package metadata, not a fixed path.
Base characters are the files named exactly `^[0-9a-f]{4,5}\\.svg$`; `variants=True` adds the others
(e.g. `04e14-Kaisho.svg`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from svgpathtools import Arc, parse_path

from sparsedm.data.strokes.sketch import LoadResult, Sketch, YAxis, choose_subset
from sparsedm.errors import UserError

log = logging.getLogger(__name__)

BASE_NAME = re.compile(r"^([0-9a-f]{4,5})\.svg$")  # the hex code point: 04e00.svg, or 4e00.svg before 2012
SUBFOLDERS = ("kanji", "SVG")  # where a release keeps its SVGs (SVG/ before 2012)
Y_AXIS = YAxis.down  # SVG user space
_STROKE_ID = re.compile(r"-s(\d+)$")
_POINTS_PER_CURVE = 8


def builtin_kanji_dir() -> Path:
    """The `kanji/` folder installed by the `kanjivg` package."""
    try:
        folder = Path(importlib.metadata.distribution("kanjivg").locate_file("kanji"))
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the kanjivg package is not installed; `pip install kanjivg` or set data.path") from None
    if not folder.is_dir():
        raise UserError(f"the kanjivg package has no kanji/ folder at {folder}; reinstall it or set data.path")
    return folder


def find_kanjivg_files(path: str | None, variants: bool) -> list[Path]:
    """Sorted SVG files: from `path` (a folder, or its `kanji/` or `SVG/` subfolder) or from the installed
    package."""
    if path is None:
        folder = builtin_kanji_dir()
    else:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(f"KanjiVG path {folder} is not a folder; point data.path at the kanji/ folder of SVGs")
        folder = next((folder / sub for sub in SUBFOLDERS if (folder / sub).is_dir()), folder)
    svgs = sorted(f for f in folder.iterdir() if f.suffix == ".svg")
    if not svgs:
        raise UserError(f"no .svg files in {folder}; point data.path at the kanji/ folder of KanjiVG")
    if variants:
        return svgs
    base = [f for f in svgs if BASE_NAME.match(f.name)]
    if not base:
        raise UserError(
            f"{folder} holds {len(svgs)} .svg files but none named like a KanjiVG base character "
            "(04e00.svg, or 4e00.svg before 2012); point data.path at KanjiVG's kanji/ folder, "
            "or set data.variants=true to read every .svg"
        )
    names: dict[int, list[str]] = {}
    for f in base:
        names.setdefault(int(BASE_NAME.match(f.name).group(1), 16), []).append(f.name)
    twice = [both for both in names.values() if len(both) > 1]
    if twice:
        raise UserError(
            f"{folder} holds {len(twice)} character(s) under two names (e.g. {' and '.join(twice[0])}): "
            "files of a pre-2012 and a later KanjiVG release mixed; keep one release in the folder"
        )
    return base


def _bernstein(n_control: int) -> np.ndarray:
    """(samples, n_control) Bernstein weights at t = 1/k .. 1, so `weights @ control_points` samples a Bézier.

    Evaluating this way is about 10x faster than svgpathtools' own `points()`, which builds a numpy
    polynomial per segment. A Line (2 control points) needs only its end point.
    """
    if n_control == 2:
        return np.array([[0.0, 1.0]])
    t = np.linspace(0.0, 1.0, _POINTS_PER_CURVE + 1)[1:, None]
    degree = n_control - 1
    k = np.arange(n_control)[None, :]
    binom = np.array([math.comb(degree, i) for i in range(n_control)])[None, :]
    return binom * t**k * (1 - t) ** (degree - k)


_BERNSTEIN = {n: _bernstein(n) for n in (2, 3, 4)}
_ARC_TS = np.linspace(0.0, 1.0, _POINTS_PER_CURVE + 1)[1:]


def _polyline(subpath) -> np.ndarray:
    """Sample one continuous svgpathtools subpath into an (n, 2) array."""
    points = [np.array([subpath[0].start])]
    for seg in subpath:
        if isinstance(seg, Arc):
            points.append(np.array([seg.point(t) for t in _ARC_TS]))
        else:
            control = np.array(seg.bpoints())
            points.append(_BERNSTEIN[len(control)] @ control)
    z = np.concatenate(points)
    return np.stack([z.real, z.imag], axis=1)


def parse_kanji_svg(text: bytes | str) -> Sketch:
    """One KanjiVG SVG to a Sketch (y down, viewBox units). ValueError / ET.ParseError if malformed."""
    root = ET.fromstring(text)
    paths = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "path" and el.get("d")]
    if not paths:
        raise ValueError("no stroke paths")
    numbers = [_STROKE_ID.search(el.get("id", "")) for el in paths]
    if all(numbers):
        # document order is already the stroke order in KanjiVG, the ids make that explicit
        paths = [el for _, el in sorted(zip((int(m.group(1)) for m in numbers), paths), key=lambda p: p[0])]
    strokes = []
    for el in paths:
        for subpath in parse_path(el.get("d")).continuous_subpaths():
            if len(subpath):
                strokes.append(_polyline(subpath))
    if not strokes:
        raise ValueError("empty stroke paths")
    sketch = Sketch.from_strokes(strokes)
    if not np.isfinite(sketch.points).all():
        raise ValueError("non-finite coordinate")
    return sketch


def load_kanjivg(
    path: str | None = None, variants: bool = False, max_items: int | None = None, seed: int = 0
) -> LoadResult:
    """Read KanjiVG characters; `max_items` keeps a seeded random subset of the files before parsing."""
    files = find_kanjivg_files(path, variants)
    if not variants:
        others = sum(1 for f in files[0].parent.iterdir() if f.suffix == ".svg") - len(files)
        log.info("KanjiVG: %d base characters in %s; data.variants=true adds its %d other .svg files",
                 len(files), files[0].parent, others)  # fmt: skip
    files = [files[i] for i in choose_subset(len(files), max_items, seed)]
    out = LoadResult(Y_AXIS)
    for file in files:
        try:
            out.add(parse_kanji_svg(file.read_bytes()))
        except ET.ParseError:
            out.skip("invalid XML")
        except (ValueError, IndexError, TypeError) as e:
            # svgpathtools raises ValueError/IndexError on a broken `d` attribute
            out.skip(f"bad stroke path ({e.__class__.__name__})")
    return out.finish(f"KanjiVG ({files[0].parent})")


def kanjivg_identity(path: str | None, variants: bool) -> list:
    """Cache-key material: the package version for built-in data, else the folder's file listing stats."""
    if path is None:
        return ["kanjivg package", importlib.metadata.version("kanjivg"), variants]
    files = find_kanjivg_files(path, variants)
    stats = [f.stat() for f in files]
    return [
        os.path.abspath(files[0].parent),
        len(files),
        sum(s.st_size for s in stats),
        max(s.st_mtime_ns for s in stats),
    ]
