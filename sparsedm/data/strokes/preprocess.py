"""ChiroDiff preprocessing: start at the origin, unit size, fixed arc-length spacing, capped length.

Follows the published ChiroDiff data pipeline (Das et al., ICLR 2023; dasayan05/chirodiff `data/qd.py:87-102`,
`data/sketch.py:124-148`, `data/batching.py:34-37`): keep the first `max_strokes` strokes, drop one-point
strokes, move the first point to the origin, scale so that the point farthest from the start is at distance 1
("enclosing radius" 1), resample every stroke at a fixed spacing along its arc length, reject long sketches.
The model-facing multiplication (ChiroDiff uses x10) is *not* done here: it is `feature_scale` in
`dataset.py`, so cached sketches stay in unit size.

Steps, in order, for one sketch (defaults are the reference's):
1. cap the number of strokes at `max_strokes`: `stroke_overflow="truncate"` keeps the first strokes, as the
   reference does (qd.py:87-89), `"drop"` rejects the sketch;
2. drop one-point strokes (sketch.py:128-129); a stroke of several points at one place is kept as a dot;
3. normalise (start at (0, 0), enclosing radius 1);
4. drop strokes whose arc length is below `min_stroke_length` (unit size; the reference drops none: 0);
   if that removed anything, normalise again so the invariants still hold;
5. resample each stroke to n = max(2, floor(length / spacing)) points evenly spaced along its arc length,
   both ends kept (sketch.py:146, data/utils.py:9-16), so a step is length / (n - 1) >= spacing; then
   normalise once more, as the reference's final `scale_spatial` does (qd.py:102), because the resampled
   points cut the corners of the polyline (a change of scale of well under 1%);
6. cap the total number of points at `max_points` (the reference rejects 300 or more: 299, batching.py:36):
   `point_overflow="drop"` rejects the sketch, `"truncate"` keeps the first points (the spacing stays, so
   the enclosing radius of a truncated sketch may be below 1).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from sparsedm.data.strokes.sketch import Sketch
from sparsedm.progress import progress_bar

log = logging.getLogger(__name__)

OVERFLOW_MODES = ("drop", "truncate")


def _distinct_points(xy: np.ndarray) -> np.ndarray:
    """Remove consecutive repeats, which would give zero-length steps and break arc-length interpolation."""
    if len(xy) < 2:
        return xy
    keep = np.ones(len(xy), dtype=bool)
    keep[1:] = np.any(np.diff(xy, axis=0) != 0, axis=1)
    return xy[keep]


def _arc_lengths(xy: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each vertex, starting at 0."""
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def normalise(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """Translate so the first point is (0, 0) and scale so the farthest point is at distance 1."""
    start = strokes[0][0]
    moved = [s - start for s in strokes]
    radius = max(float(np.linalg.norm(s, axis=1).max()) for s in moved)
    return [s / radius for s in moved]


def resample_stroke(xy: np.ndarray, spacing: float) -> np.ndarray:
    """max(2, floor(length / spacing)) points evenly spaced along a polyline, both ends kept (see step 5)."""
    arc = _arc_lengths(xy.astype(np.float64))
    n_points = max(2, int(arc[-1] / spacing))
    targets = np.linspace(0.0, arc[-1], n_points)
    return np.stack([np.interp(targets, arc, xy[:, 0]), np.interp(targets, arc, xy[:, 1])], axis=1)


def preprocess_sketch(
    sketch: Sketch,
    *,
    spacing: float,
    max_strokes: int,
    max_points: int,
    stroke_overflow: str,
    point_overflow: str,
    min_stroke_length: float,
    counts: Counter,
) -> Sketch | None:
    """One sketch through steps 1-6; None when it is rejected. `counts` records what was dropped or cut."""
    if not np.isfinite(sketch.points).all():
        counts["rejected: non-finite coordinates"] += 1
        return None
    raw = sketch.strokes()
    if len(raw) > max_strokes:
        if stroke_overflow == "drop":
            counts["rejected: more than max_strokes strokes"] += 1
            return None
        counts["truncated: more than max_strokes strokes"] += 1
        raw = raw[:max_strokes]
    strokes = []
    for stroke in raw:
        if len(stroke) < 2:
            counts["strokes dropped: single point"] += 1
        else:
            strokes.append(_distinct_points(stroke.astype(np.float64)))
    if not strokes:
        counts["rejected: no stroke of two points"] += 1
        return None
    if all((s == strokes[0][0]).all() for s in strokes):  # no size to normalise
        counts["rejected: every point at one place"] += 1
        return None

    strokes = normalise(strokes)
    kept = [s for s in strokes if _arc_lengths(s)[-1] >= min_stroke_length]
    if len(kept) < len(strokes):
        counts["strokes dropped: shorter than min_stroke_length"] += len(strokes) - len(kept)
        if not kept:
            counts["rejected: every stroke shorter than min_stroke_length"] += 1
            return None
        kept = normalise(kept)

    # resampled points skip the polyline's vertices, so the farthest one may sit just inside radius 1:
    # normalising again makes the radius exact and changes the spacing by that tiny factor only
    resampled = normalise([resample_stroke(s, spacing) for s in kept])
    total = sum(len(s) for s in resampled)
    if total > max_points:
        if point_overflow == "drop":
            counts["rejected: more than max_points points"] += 1
            return None
        counts["truncated: more than max_points points"] += 1
        resampled = _keep_first_points(resampled, max_points)
    return Sketch.from_strokes(resampled)


def _keep_first_points(strokes: list[np.ndarray], budget: int) -> list[np.ndarray]:
    """The first `budget` points; a last piece that would be a single point is left out (degenerate)."""
    out = []
    for stroke in strokes:
        if budget < 2:
            break
        out.append(stroke[:budget])
        budget -= len(out[-1])
    return out


def preprocess_sketches(
    sketches: list[Sketch],
    *,
    spacing: float,
    max_strokes: int,
    max_points: int,
    stroke_overflow: str,
    point_overflow: str,
    min_stroke_length: float,
    progress: bool | None = None,
) -> tuple[list[Sketch], Counter]:
    """All sketches through `preprocess_sketch`; returns the survivors (in order) and the counts.
    progress: a bar; None shows one on a terminal only."""
    counts: Counter = Counter()
    out = []
    bar = progress_bar(
        sketches,
        desc="preprocess strokes",
        unit="sketch",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    for sketch in bar:
        done = preprocess_sketch(
            sketch,
            spacing=spacing,
            max_strokes=max_strokes,
            max_points=max_points,
            stroke_overflow=stroke_overflow,
            point_overflow=point_overflow,
            min_stroke_length=min_stroke_length,
            counts=counts,
        )
        if done is not None:
            out.append(done)
    if counts:
        log.info("preprocessing kept %d of %d drawings; %s", len(out), len(sketches), dict(sorted(counts.items())))
    return out, counts
