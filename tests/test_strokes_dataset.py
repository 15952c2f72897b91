"""load_stroke_splits (cache, split), model features, collate, decoding, and the config checks."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from sparsedm.data.strokes import quickdraw
from sparsedm.data.strokes.config import StrokeDataConfig, check_stroke_config
from sparsedm.data.strokes.dataset import (
    StrokeDataset,
    cache_path,
    collate_strokes,
    features_to_sketches,
    load_stroke_splits,
    sequence_lengths,
    sketch_to_features,
    split_sketches,
)
from sparsedm.data.strokes.sketch import Sketch
from sparsedm.errors import UserError


@pytest.fixture
def qd_config(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        strokes = []
        for _ in range(rng.integers(1, 4)):
            xy = np.cumsum(rng.integers(-20, 21, size=(rng.integers(3, 12), 2)), axis=0) + 128
            strokes.append(xy.T.tolist())
        lines.append(json.dumps({"word": "cat", "key_id": str(i), "drawing": strokes}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat.ndjson").write_text("\n".join(lines) + "\n")
    return StrokeDataConfig(
        name="quickdraw",
        path=str(tmp_path / "data"),
        categories=["cat"],
        val_fraction=0.25,
        cache_dir=str(tmp_path / "cache"),
    )


def _points(sketches):
    return [s.points.tolist() for s in sketches]


def test_second_load_uses_the_cache_and_a_new_setting_does_not(qd_config, monkeypatch):
    calls = []
    real_loader = quickdraw.load_quickdraw
    monkeypatch.setattr(quickdraw, "load_quickdraw", lambda *a, **k: calls.append(1) or real_loader(*a, **k))

    train, val = load_stroke_splits(qd_config)
    assert len(calls) == 1 and cache_path(qd_config).is_file()
    assert len(train) + len(val) == 40 and len(val) == 10

    again_train, again_val = load_stroke_splits(qd_config)
    assert len(calls) == 1  # nothing parsed the second time
    assert _points(again_train) == _points(train) and _points(again_val) == _points(val)

    qd_config.spacing = 0.1
    coarser, _ = load_stroke_splits(qd_config)
    assert len(calls) == 2
    assert sequence_lengths(coarser).sum() < sequence_lengths(train).sum()

    # the split and the features are not part of the cached data: changing them re-uses it
    qd_config.spacing, qd_config.val_fraction, qd_config.representation = 0.05, 0.5, "absolute"
    load_stroke_splits(qd_config)
    assert len(calls) == 2


def test_split_is_deterministic_disjoint_and_complete():
    sketches = [Sketch.from_strokes([np.array([[0.0, 0.0], [i + 1.0, 0.0]])]) for i in range(100)]
    ids = lambda part: [float(s.points[-1, 0]) for s in part]  # noqa: E731
    train, val = split_sketches(sketches, 0.2, seed=7)
    train2, val2 = split_sketches(sketches, 0.2, seed=7)
    _, val3 = split_sketches(sketches, 0.2, seed=8)
    assert len(val) == 20 and ids(val) == ids(val2) and ids(train) == ids(train2) and ids(val) != ids(val3)
    assert sorted(ids(train) + ids(val)) == list(range(1, 101))
    # tiny sets still get one validation sketch, and never lose all training data
    assert [len(p) for p in split_sketches(sketches[:2], 0.1, 0)] == [1, 1]


def test_features_collate_and_decode_round_trip():
    a = Sketch.from_strokes([np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.1]]), np.array([[0.5, 0.5], [0.5, 0.6]])])
    b = Sketch.from_strokes([np.array([[0.0, 0.0], [0.0, -0.3]])])
    for representation in ("delta", "absolute"):
        dataset = StrokeDataset([a, b], representation, feature_scale=10.0)
        assert len(dataset) == 2 and dataset[0].dtype == torch.float32
        # the origin is not a row (batching.py:91, 159); pen 1 on a stroke's last point, else 0 (batching.py:81-82)
        assert dataset[0][:, 2].tolist() == [0, 1, 0, 1]
        batch = collate_strokes([dataset[0], dataset[1]])
        assert batch["x"].shape == (2, 4, 3) and batch["lengths"].tolist() == [4, 1]
        assert batch["mask"].tolist() == [[True] * 4, [True, False, False, False]]
        assert torch.all(batch["x"][1, 1:] == 0)
        decoded = features_to_sketches(batch["x"], batch["lengths"], representation, 10.0)
        for original, back in zip((a, b), decoded):
            np.testing.assert_allclose(back.points, original.points, atol=1e-6)

    delta = sketch_to_features(a, "delta", 10.0)
    np.testing.assert_allclose(delta[:, :2], [[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 1.0]], atol=1e-5)
    np.testing.assert_allclose(sketch_to_features(a, "absolute", 10.0)[:, :2], a.points[1:, :2] * 10, atol=1e-5)
    assert sequence_lengths([a, b]).tolist() == [4, 1]


def test_decoding_thresholds_the_pen_at_pen_threshold():
    x = torch.zeros(1, 5, 3)
    x[0, :, 2] = torch.tensor([0.5, 0.79, 0.81, 0.2, 0.3])
    x[0, :, 0] = 1.0
    (sketch,) = features_to_sketches(x, torch.tensor([5]), "delta", 1.0)  # default threshold: ChiroDiff's 0.8
    assert sketch.points[:, 2].tolist() == [0, 0, 0, 1, 0, 1]  # the origin, then the rows; the last ends a stroke
    assert [len(p) for p in sketch.strokes()] == [4, 2]
    (sketch,) = features_to_sketches(x, torch.tensor([5]), "delta", 1.0, pen_threshold=0.4)
    assert sketch.points[:, 2].tolist() == [0, 1, 1, 1, 0, 1]


def test_decoding_garbage_still_gives_drawable_sketches():
    x = torch.randn(4, 6, 3)
    x[0, :, 2] = -1.0  # the model never lifted the pen
    x[1, 2] = float("nan")
    x[2, 1, :2] = float("inf")
    lengths = torch.tensor([6, 6, 3, 0])
    sketches = features_to_sketches(x, lengths, "delta", 10.0)
    assert [len(s) for s in sketches] == [7, 7, 4, 1]
    for s in sketches:
        assert np.isfinite(s.points).all() and s.points[-1, 2] == 1 and s.num_strokes >= 1
    assert sketches[0].num_strokes == 1


def test_every_preprocessing_setting_is_part_of_the_cache_key(qd_config):
    base = cache_path(qd_config)
    changes = {
        "spacing": 0.1,
        "min_stroke_length": 0.01,
        "max_strokes": 3,
        "stroke_overflow": "drop",
        "max_points": 100,
        "point_overflow": "truncate",
    }
    for key, value in changes.items():
        changed = OmegaConf.merge(OmegaConf.structured(qd_config), {key: value})
        assert cache_path(changed) != base, key
    assert cache_path(OmegaConf.merge(OmegaConf.structured(qd_config), {"pen_threshold": 0.5})) == base


def test_config_checks_and_omegaconf(tmp_path):
    with pytest.raises(UserError, match="kanjivg, quickdraw, vmnist, mnist-vectorised"):
        check_stroke_config(StrokeDataConfig(name="mnist"))
    with pytest.raises(UserError, match="no built-in copy; set data.path"):
        check_stroke_config(StrokeDataConfig(name="quickdraw"))
    with pytest.raises(UserError, match="data.stroke_overflow='clip'"):
        check_stroke_config(StrokeDataConfig(stroke_overflow="clip"))
    with pytest.raises(UserError, match="data.pen_threshold=1.0"):
        check_stroke_config(StrokeDataConfig(pen_threshold=1.0))
    with pytest.raises(UserError, match="data.val_fraction"):
        check_stroke_config(StrokeDataConfig(val_fraction=1.0))

    cfg = OmegaConf.merge(
        OmegaConf.structured(StrokeDataConfig),
        OmegaConf.from_dotlist(["max_items=3", f"cache_dir={tmp_path}", "categories=[cat,dog]"]),
    )
    assert list(cfg.categories) == ["cat", "dog"]
    check_stroke_config(cfg)
    train, val = load_stroke_splits(cfg)  # the built-in KanjiVG, three characters
    assert len(train) + len(val) == 3
    with pytest.raises(ValidationError):
        OmegaConf.merge(OmegaConf.structured(StrokeDataConfig), {"max_points": "many"})
