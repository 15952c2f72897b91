"""The Sketch representation and ChiroDiff preprocessing: invariants that training relies on."""

from collections import Counter

import numpy as np
import pytest

from sparsedm.data.strokes.config import StrokeDataConfig
from sparsedm.data.strokes.dataset import _PREPROCESS_KEYS
from sparsedm.data.strokes.preprocess import preprocess_sketch, preprocess_sketches, resample_stroke
from sparsedm.data.strokes.sketch import Sketch

PARAMS = {key: getattr(StrokeDataConfig(), key) for key in _PREPROCESS_KEYS}  # the defaults: ChiroDiff's rules


def _random_sketch(rng, n_strokes=3):
    """Smooth random strokes far from the origin, in QuickDraw-like pixel units."""
    strokes = []
    for _ in range(n_strokes):
        t = np.linspace(0, 1, rng.integers(30, 60))[:, None]
        centre, radius = rng.uniform(100, 200, size=2), rng.uniform(10, 60)
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(1, 4) * t
        strokes.append(centre + radius * np.concatenate([np.cos(angle), np.sin(angle)], axis=1))
    return Sketch.from_strokes(strokes)


def test_sketch_strokes_and_deltas_round_trip():
    a, b = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0]]), np.array([[5.0, 5.0], [6.0, 7.0]])
    sketch = Sketch.from_strokes([a, np.zeros((0, 2)), b])
    assert sketch.points.dtype == np.float32 and sketch.points.shape == (5, 3)
    assert sketch.points[:, 2].tolist() == [0, 0, 1, 0, 1]
    assert [s.tolist() for s in sketch.strokes()] == [a.tolist(), b.tolist()]
    deltas = sketch.to_deltas()
    assert deltas[0, :2].tolist() == [0, 0] and deltas[3, :2].tolist() == [2, 4]
    np.testing.assert_array_equal(Sketch.from_deltas(deltas).points, sketch.points)


def test_preprocessed_sketch_starts_at_origin_with_unit_radius():
    rng = np.random.default_rng(0)
    sketches = [_random_sketch(rng) for _ in range(20)]
    out, counts = preprocess_sketches(sketches, **PARAMS)
    assert len(out) == 20 and not counts
    for sketch in out:
        np.testing.assert_allclose(sketch.points[0, :2], 0.0, atol=1e-6)
        assert np.linalg.norm(sketch.points[:, :2], axis=1).max() == pytest.approx(1.0, abs=1e-5)
        assert sketch.points[-1, 2] == 1


def test_resampling_gives_floor_length_over_spacing_points_and_both_ends():
    """ChiroDiff: n = max(2, int(length / delta)) points at linspace(0, length, n) (sketch.py:146, utils.py:9-16)."""
    spacing = 0.05
    line = np.array([[0.0, 0.0], [0.3, 0.4], [0.6, 0.8]])  # 1.0 long: 20 points, 19 equal steps
    resampled = resample_stroke(line, spacing)
    assert len(resampled) == 20
    np.testing.assert_allclose(np.linalg.norm(np.diff(resampled, axis=0), axis=1), 1.0 / 19, rtol=1e-9)

    angle = np.linspace(0, 0.93 / 0.5, 400)  # a circle arc 0.93 long: floor(18.6) = 18 points
    arc = 0.5 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    resampled = resample_stroke(arc, spacing)
    assert len(resampled) == 18
    np.testing.assert_allclose(resampled[[0, -1]], arc[[0, -1]], atol=1e-12)
    short = np.array([[0.0, 0.0], [0.07, 0.0]])  # shorter than two steps: still both ends
    np.testing.assert_allclose(resample_stroke(short, spacing), short, atol=1e-12)


def test_spacing_holds_inside_every_preprocessed_stroke():
    rng = np.random.default_rng(1)
    out, _ = preprocess_sketches([_random_sketch(rng) for _ in range(10)], **PARAMS)
    for sketch in out:
        for stroke in sketch.strokes():
            steps = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
            # arc steps are equal per stroke and length / (n - 1) >= spacing; chords of smooth curves barely shorter
            assert np.ptp(steps) < 0.02 * PARAMS["spacing"]
            assert np.all((steps > 0.98 * PARAMS["spacing"]) & (steps <= 3 * PARAMS["spacing"]))


def test_only_one_point_strokes_are_dropped_by_default():
    good = np.array([[10.0, 10.0], [20.0, 10.0], [30.0, 20.0]])
    dot, repeated_tap = np.array([[50.0, 50.0]]), np.array([[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    tiny = np.array([[40.0, 40.0], [40.01, 40.0]])  # 0.01 px
    counts = Counter()
    out = preprocess_sketch(Sketch.from_strokes([good, dot, repeated_tap, tiny]), **PARAMS, counts=counts)
    assert out.num_strokes == 3 and counts == {"strokes dropped: single point": 1}
    assert len(out.strokes()[1]) == 2 and np.ptp(out.strokes()[1], axis=0).max() == 0  # the tap: a dot

    counts = Counter()
    params = {**PARAMS, "min_stroke_length": 0.01}  # the key still drops short strokes when asked
    out = preprocess_sketch(Sketch.from_strokes([repeated_tap, good, dot, tiny]), **params, counts=counts)
    assert out.num_strokes == 1
    assert counts == {"strokes dropped: single point": 1, "strokes dropped: shorter than min_stroke_length": 2}
    # the kept stroke now defines the origin and the scale
    np.testing.assert_allclose(out.points[0, :2], 0.0, atol=1e-6)
    assert np.linalg.norm(out.points[:, :2], axis=1).max() == pytest.approx(1.0, abs=1e-5)

    counts = Counter()
    assert preprocess_sketch(Sketch.from_strokes([dot, repeated_tap]), **PARAMS, counts=counts) is None
    assert counts["rejected: every point at one place"] == 1


def test_stroke_cap_truncates_by_default_before_dropping_one_point_strokes():
    rng = np.random.default_rng(2)
    sketch = _random_sketch(rng, n_strokes=6)
    counts = Counter()
    out = preprocess_sketch(sketch, **{**PARAMS, "max_strokes": 4}, counts=counts)
    assert out.num_strokes == 4 and counts == {"truncated: more than max_strokes strokes": 1}
    np.testing.assert_allclose(out.points[0, :2], 0.0, atol=1e-6)
    assert np.linalg.norm(out.points[:, :2], axis=1).max() == pytest.approx(1.0, abs=1e-5)

    counts = Counter()
    assert preprocess_sketch(sketch, **{**PARAMS, "max_strokes": 4, "stroke_overflow": "drop"}, counts=counts) is None
    assert counts == {"rejected: more than max_strokes strokes": 1}

    # the reference cuts the raw stroke list (qd.py:87-89), then drops one-point strokes (sketch.py:128-129)
    a, b, c = _random_sketch(rng, n_strokes=3).strokes()
    out = preprocess_sketch(
        Sketch.from_strokes([a, np.array([[9.0, 9.0]]), b, c]), **{**PARAMS, "max_strokes": 3}, counts=Counter()
    )
    assert out.num_strokes == 2


def test_point_cap_drop_and_truncate():
    sketch = Sketch.from_strokes([np.array([[0.0, 0.0], [100.0, 0.0]]), np.array([[0.0, 10.0], [100.0, 10.0]])])
    per_stroke = int((100 / np.hypot(100, 10)) / PARAMS["spacing"])  # unit radius: each stroke 0.995 long
    full = preprocess_sketch(sketch, **PARAMS, counts=Counter())
    assert len(full) == 2 * per_stroke == 38

    counts = Counter()
    assert preprocess_sketch(sketch, **{**PARAMS, "max_points": 30}, counts=counts) is None
    assert counts == {"rejected: more than max_points points": 1}

    for cap, n_strokes in ((30, 2), (20, 1)):  # 20 = 19 + 1: a one-point remainder is left out
        counts = Counter()
        params = {**PARAMS, "max_points": cap, "point_overflow": "truncate"}
        out = preprocess_sketch(sketch, **params, counts=counts)
        assert len(out) == min(cap, per_stroke * n_strokes) and out.num_strokes == n_strokes
        assert out.points[-1, 2] == 1 and counts == {"truncated: more than max_points points": 1}
        np.testing.assert_array_equal(out.points[:per_stroke], full.points[:per_stroke])


def test_sketches_of_300_points_or_more_are_rejected_by_default():
    """batching.py:34-37: total_seq_len >= MAX_SEQ_LENGTH = 300 -> None."""
    line = Sketch.from_strokes([np.array([[0.0, 0.0], [1.0, 0.0]])])
    for n_points, kept in ((299, True), (300, False)):
        counts = Counter()
        out = preprocess_sketch(line, **{**PARAMS, "spacing": 1 / (n_points + 0.5)}, counts=counts)
        assert (out is not None) == kept
        assert kept or counts == {"rejected: more than max_points points": 1}
        assert not kept or len(out) == n_points


def test_non_finite_sketch_is_rejected():
    counts = Counter()
    sketch = Sketch.from_strokes([np.array([[0.0, 0.0], [np.nan, 1.0], [2.0, 2.0]])])
    assert preprocess_sketch(sketch, **PARAMS, counts=counts) is None
    assert counts == {"rejected: non-finite coordinates": 1}


def test_preprocessing_shows_a_bar_only_when_asked(capsys):
    rng = np.random.default_rng(0)
    sketches = [_random_sketch(rng) for _ in range(5)]
    preprocess_sketches(sketches, **PARAMS, progress=False)
    assert "preprocess strokes" not in capsys.readouterr().err
    preprocess_sketches(sketches, **PARAMS, progress=True)
    assert "preprocess strokes" in capsys.readouterr().err
