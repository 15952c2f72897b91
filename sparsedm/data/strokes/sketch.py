"""One pen drawing as a sequence of points (x, y, pen), and what a loader hands back.

Every data set (QuickDraw, KanjiVG, VMNIST, the project's MNIST vectorisation) is turned into `Sketch`
objects, and every model output is decoded back into them, so there is exactly one representation:

    points[i] = (x_i, y_i, pen_i)   absolute coordinates; pen_i = 1 on the LAST point of each stroke, else 0

sparsedm's axes: x grows to the right, y grows DOWNWARDS (screen, SVG and image rows, as `render.py` draws).
Sources differ: each loader names its source's `YAxis` in a `Y_AXIS` constant and hands its sketches to
`LoadResult(Y_AXIS).add`, which is the one place a source whose y grows upwards (VMNIST) is flipped (y -> -y).
docs/data.md lists every source's axes, units and pen encoding.
The delta ("velocity") form replaces (x_i, y_i) by (x_i - x_{i-1}, y_i - y_{i-1}), with the first point's
delta equal to its absolute position, so `np.cumsum` undoes it exactly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from sparsedm.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Sketch:
    """A drawing: `points` is (N, 3) float32 of absolute x, y and pen (1 = this point ends a stroke)."""

    points: np.ndarray

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != 3 or len(self.points) == 0:
            raise ValueError(f"Sketch points must be a non-empty (N, 3) array, got shape {self.points.shape}")

    @classmethod
    def from_strokes(cls, strokes: list[np.ndarray]) -> Sketch:
        """Build from a list of (n, 2) polylines; empty polylines are ignored."""
        parts = []
        for stroke in strokes:
            xy = np.asarray(stroke, dtype=np.float32).reshape(-1, 2)
            if len(xy) == 0:
                continue
            pen = np.zeros((len(xy), 1), dtype=np.float32)
            pen[-1] = 1.0
            parts.append(np.concatenate([xy, pen], axis=1))
        if not parts:
            raise ValueError("a sketch needs at least one non-empty stroke")
        return cls(np.concatenate(parts, axis=0))

    def strokes(self) -> list[np.ndarray]:
        """The (n, 2) polylines, in drawing order. A trailing run without a pen-up still counts as a stroke."""
        ends = np.flatnonzero(self.points[:, 2] > 0.5) + 1
        pieces = np.split(self.points[:, :2], ends)
        return [p for p in pieces if len(p)]

    @property
    def num_strokes(self) -> int:
        return len(self.strokes())

    def __len__(self) -> int:
        return len(self.points)

    def to_deltas(self) -> np.ndarray:
        """(N, 3): dx, dy relative to the previous point (first row = absolute start), pen unchanged."""
        out = self.points.copy()
        out[1:, :2] = np.diff(self.points[:, :2], axis=0)
        return out

    @classmethod
    def from_deltas(cls, deltas: np.ndarray) -> Sketch:
        """Inverse of `to_deltas`."""
        deltas = np.asarray(deltas, dtype=np.float32)
        points = deltas.copy()
        # accumulate in float64: long sequences of float32 sums drift visibly
        points[:, :2] = np.cumsum(deltas[:, :2].astype(np.float64), axis=0)
        return cls(points)


def choose_subset(n: int, max_items: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of `max_items` out of `n` records (all of them when None).

    Random rather than "the first k" so that a small CPU subset still covers every category / character;
    sorted so files are read in their natural order.
    """
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_items])


class YAxis(StrEnum):
    """Which way a source's y coordinate grows."""

    down = "down"  # screen pixels, SVG, image rows: sparsedm's own convention
    up = "up"  # mathematical axes (matplotlib's default), e.g. VMNIST's pickles


@dataclass
class LoadResult:
    """Sketches read from one source (in sparsedm's axes), plus how many records were skipped and why.

    `y_axis` is the source's orientation; `add` turns each sketch from it into sparsedm's."""

    y_axis: YAxis
    sketches: list[Sketch] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def add(self, sketch: Sketch) -> None:
        """Keep a sketch given in the source's axes: flipped (y -> -y) when the source's y grows upwards."""
        if self.y_axis == YAxis.up:
            points = sketch.points.copy()
            points[:, 1] *= -1
            sketch = Sketch(points)
        self.sketches.append(sketch)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def finish(self, source: str) -> LoadResult:
        """Log what was skipped; raise when nothing usable was read (the caller cannot train on nothing)."""
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            log.warning("%s: skipped %d malformed records (%s)", source, sum(self.skipped.values()), reasons)
        if not self.sketches:
            raise UserError(
                f"no usable drawings in {source} ({sum(self.skipped.values())} records skipped as malformed); "
                "check that data.path points at the right files"
            )
        log.info("%s: read %d drawings", source, len(self.sketches))
        return self
