"""Rasterisation used for sample pictures and FID: fixed size, ink present, position/scale invariant."""

import numpy as np
import pytest
from PIL import Image

from sparsedm.data.strokes.render import render_sketch, render_sketches, save_sketch_grid
from sparsedm.data.strokes.sketch import Sketch

ANGLE = np.linspace(0, 2 * np.pi, 50)
CIRCLE = np.stack([np.cos(ANGLE), np.sin(ANGLE)], axis=1)
CROSS = [np.array([[-1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, -0.5], [0.0, 0.5]])]


def test_render_shape_dtype_and_ink():
    sketches = [Sketch.from_strokes([CIRCLE]), Sketch.from_strokes(CROSS)]
    images = render_sketches(sketches)
    assert images.shape == (2, 64, 64) and images.dtype == np.uint8
    for image in images:
        assert (image < 128).sum() > 50  # dark strokes ...
        assert image[0, 0] == 255 and image[-1, -1] == 255  # ... on a white margin
        assert len(np.unique(image)) > 2  # antialiased edges, not a hard threshold
    # the circle is fit to the box minus a 10% margin: ink spans about 80% of the width
    columns = np.flatnonzero((images[0] < 128).any(axis=0))
    assert 0.75 * 64 <= columns[-1] - columns[0] + 1 <= 0.85 * 64
    assert render_sketches(sketches, size=32).shape == (2, 32, 32)


def test_render_ignores_position_and_scale_but_not_shape():
    base = Sketch.from_strokes(CROSS)
    moved = Sketch.from_strokes([3.0 * s + 40.0 for s in CROSS])
    np.testing.assert_array_equal(render_sketch(base), render_sketch(moved))
    assert np.abs(render_sketch(base).astype(int) - render_sketch(Sketch.from_strokes([CIRCLE]))).max() > 100


def test_single_point_and_wider_lines():
    dot = render_sketch(Sketch(np.array([[5.0, 5.0, 1.0]])))
    assert (dot < 128).sum() > 0 and dot[32, 32] < 128  # drawn as a dot in the centre
    thin = render_sketch(Sketch.from_strokes(CROSS))
    thick = render_sketch(Sketch.from_strokes(CROSS), line_width=6)
    assert (thick < 128).sum() > 2 * (thin < 128).sum()
    with pytest.raises(ValueError, match="non-finite"):
        render_sketch(Sketch(np.array([[np.nan, 0.0, 1.0]])))


def test_save_grid_png(tmp_path):
    sketches = [Sketch.from_strokes([CIRCLE])] * 5
    path = save_sketch_grid(sketches, tmp_path / "out" / "grid.png", ncol=2, size=32)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 34 + 2, 2 * 34 + 2)
    np.testing.assert_array_equal(grid[2:34, 2:34], render_sketch(sketches[0], size=32))
    assert (grid[-34:-2, -34:-2] == 128).all()  # the sixth cell is empty
