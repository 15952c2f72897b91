"""Rasterise sketches, identically every time: sample pictures and FID (real and generated) both use this.

The fixed recipe, so that FID numbers stay comparable across runs:
- output `size` x `size` (default 64), one channel, uint8, black ink (0) on white (255);
- the sketch's bounding box is scaled uniformly (aspect kept) to fill (1 - 2 * MARGIN) of the side and
  centred, so position and scale of a sketch do not matter, only its shape;
- strokes are polylines of width `line_width` output pixels (default size / 32, i.e. 2 px at 64) with
  round joins and caps; a one-point stroke is a dot of that diameter;
- antialiasing: drawn with PIL at SUPERSAMPLE x the resolution, then box-averaged down (`Image.reduce`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sparsedm.data.strokes.sketch import Sketch

MARGIN = 0.1
SUPERSAMPLE = 4


def default_line_width(size: int) -> float:
    return size / 32


def render_sketch(sketch: Sketch, size: int = 64, line_width: float | None = None) -> np.ndarray:
    """One sketch to a (size, size) uint8 image (see the module docstring for the exact recipe)."""
    if not np.isfinite(sketch.points).all():
        raise ValueError("cannot render a sketch with non-finite coordinates")
    width = (default_line_width(size) if line_width is None else line_width) * SUPERSAMPLE
    canvas = size * SUPERSAMPLE
    xy = sketch.points[:, :2].astype(np.float64)
    low, high = xy.min(axis=0), xy.max(axis=0)
    extent = float((high - low).max())
    scale = canvas * (1 - 2 * MARGIN) / extent if extent > 0 else 1.0
    centre = (low + high) / 2

    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    radius = width / 2
    for stroke in sketch.strokes():
        pixels = (stroke - centre) * scale + canvas / 2
        coords = [tuple(p) for p in pixels.tolist()]
        if len(coords) > 1:
            draw.line(coords, fill=0, width=max(1, math.ceil(width)), joint="curve")
        # round caps (PIL's lines have flat ends) and the dot of a one-point stroke
        for x, y in (coords[0], coords[-1]):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
    return np.asarray(image.reduce(SUPERSAMPLE), dtype=np.uint8)


def render_sketches(sketches: list[Sketch], size: int = 64, line_width: float | None = None) -> np.ndarray:
    """(N, size, size) uint8 images, black strokes on white."""
    out = np.empty((len(sketches), size, size), dtype=np.uint8)
    for i, sketch in enumerate(sketches):
        out[i] = render_sketch(sketch, size, line_width)
    return out


def save_sketch_grid(
    sketches: list[Sketch], path: str | Path, ncol: int = 8, size: int = 64, line_width: float | None = None
) -> Path:
    """Write the sketches as a PNG grid (row-major, `ncol` columns, 2 px grey gaps); returns the path."""
    if not sketches:
        raise ValueError("no sketches to draw")
    images = render_sketches(sketches, size, line_width)
    gap = 2
    ncol = min(ncol, len(images))
    nrow = math.ceil(len(images) / ncol)
    grid = np.full((nrow * (size + gap) + gap, ncol * (size + gap) + gap), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncol)
        top, left = gap + r * (size + gap), gap + c * (size + gap)
        grid[top : top + size, left : left + size] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
