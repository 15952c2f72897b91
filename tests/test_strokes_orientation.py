"""Every source reaches sparsedm's axes (y down) upright: VMNIST's y-up pickles are flipped once, the others not."""

import json
import pickle

import numpy as np

from sparsedm.config import load_config
from sparsedm.data.strokes import (
    StrokeDataConfig,
    dataset,
    kanjivg,
    load_sketches,
    quickdraw,
    render_sketch,
    vectorize,
    vmnist,
)
from sparsedm.tasks import build_task

# Drawings as the published VMNIST pickles hold them (data/<digit>/<i>.pkl of AnonymousMorris/
# handwriting_generation): one dict per file, strokes [[x...], [y...], [t...]] of plain floats, the first point
# at (0, 0), the farthest at distance 10, t from 0 to 1, and y growing UPWARDS.
ONE = [[[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], [0.0, -2.0, -4.0, -6.0, -8.0, -9.9], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]]]
SEVEN = [  # the bar left to right at the top, then the stem down and to the left
    [
        [0.0, 1.1, 2.2, 3.3, 4.4, 5.3, 5.0, 4.5, 4.0, 3.5, 3.0],
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.1, -1.9, -3.9, -5.9, -7.9, -8.9],
        np.linspace(0, 1, 11).tolist(),
    ]
]


def _vmnist_folder(root, drawings: dict[str, list]):
    for digit, drawing in drawings.items():
        (root / digit).mkdir(parents=True)
        (root / digit / "0.pkl").write_bytes(pickle.dumps({"drawing": drawing}, protocol=4))
    return root


def test_a_vmnist_one_drawn_top_to_bottom_starts_above_its_end(tmp_path):
    (one,) = vmnist.load_vmnist(str(_vmnist_folder(tmp_path / "vmnist", {"1": ONE}))).sketches
    assert one.points[0, 1] < one.points[-1, 1]  # y down: the first point is the higher one
    np.testing.assert_allclose(one.points[:, 1], -np.array(ONE[0][1]))  # one flip, nothing else
    np.testing.assert_allclose(one.points[:, 0], ONE[0][0])


def test_a_vmnist_seven_renders_with_its_bar_at_the_top(tmp_path):
    (seven,) = vmnist.load_vmnist(str(_vmnist_folder(tmp_path / "vmnist", {"7": SEVEN}))).sketches
    ink = render_sketch(seven, size=64) < 128
    rows = np.flatnonzero(ink.any(axis=1))
    width = [np.ptp(np.flatnonzero(ink[r])) for r in rows]
    widest = rows[int(np.argmax(width))]
    assert widest < rows[0] + 0.2 * (rows[-1] - rows[0])  # the bar is in the top fifth of the inked rows
    assert max(width[-3:]) < 0.3 * max(width)  # and the stem's foot is narrow


def test_training_items_of_vmnist_keep_the_flip(tmp_path):
    """What a run trains on and FID renders: the preprocessed sketches from `load_sketches`."""
    root = _vmnist_folder(tmp_path / "vmnist", {"1": ONE})
    (one,) = load_sketches(StrokeDataConfig(name="vmnist", path=str(root), cache_dir=str(tmp_path / "cache")))
    assert one.points[0, 1] == 0 and one.points[-1, 1] > 0.9  # from the origin down to about radius 1


def test_screen_and_svg_sources_are_read_as_they_are(tmp_path):
    raw_one = {"drawing": [[[100.0, 101.0, 102.0], [50.0, 150.0, 250.0], [0, 20, 40]]]}  # y down: top to bottom
    (tmp_path / "full_raw_one.ndjson").write_text(json.dumps(raw_one) + "\n")
    (one,) = quickdraw.load_quickdraw(str(tmp_path / "full_raw_one.ndjson"), []).sketches
    np.testing.assert_array_equal(one.points[:, 1], [50, 150, 250])
    assert [m.Y_AXIS for m in (quickdraw, kanjivg, vectorize, vmnist)] == ["down", "down", "down", "up"]


def test_flipped_vmnist_gets_new_cache_and_fid_keys_and_no_other_source_does(tmp_path, monkeypatch):
    """Strokes cached and FID statistics computed from the upside-down reading are never reused."""
    root = _vmnist_folder(tmp_path / "vmnist", {"1": ONE})
    cfg = StrokeDataConfig(name="vmnist", path=str(root), cache_dir=str(tmp_path / "cache"))
    flipped = dataset.cache_path(cfg)
    vmnist_task = build_task(load_config("configs/chirodiff_vmnist.yaml", [f"data.path={root}"]))
    assert vmnist_task.reference_key().endswith("/reader-2")
    kanjivg_key = build_task(load_config("configs/chirodiff_kanjivg_cpu.yaml")).reference_key()
    assert kanjivg_key.endswith("/render-64px-line-2px")  # as archived runs recorded it
    monkeypatch.setattr(vmnist, "READER_VERSION", 1)
    assert dataset.cache_path(cfg) != flipped
