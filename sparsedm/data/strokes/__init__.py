"""Pen-stroke data for ChiroDiff: QuickDraw, KanjiVG, VMNIST and the project's MNIST vectorisation.

Layout: `sketch` (the one (x, y, pen) representation), `preprocess` (ChiroDiff normalisation and
resampling), one loader per published format (`quickdraw`, `kanjivg`, `vmnist`), `vectorize` (MNIST bitmaps
to strokes, the project's own data set), `dataset` (cache, split, features, collate), `render`
(rasterisation for pictures and FID) and `config` (the typed `data:` block).
"""

from sparsedm.data.strokes.config import (
    DATA_NAMES,
    Representation,
    StrokeDataConfig,
    check_stroke_config,
    display_name,
)
from sparsedm.data.strokes.dataset import (
    StrokeDataset,
    collate_strokes,
    features_to_sketches,
    load_sketches,
    load_stroke_splits,
    sequence_lengths,
    sketch_to_features,
    split_sketches,
)
from sparsedm.data.strokes.kanjivg import load_kanjivg
from sparsedm.data.strokes.preprocess import preprocess_sketch, preprocess_sketches
from sparsedm.data.strokes.quickdraw import load_quickdraw
from sparsedm.data.strokes.render import render_sketch, render_sketches, save_sketch_grid
from sparsedm.data.strokes.sketch import LoadResult, Sketch
from sparsedm.data.strokes.vectorize import load_mnist_vectorised, vectorise_digit
from sparsedm.data.strokes.vmnist import load_vmnist

__all__ = [
    "DATA_NAMES",
    "Representation",
    "LoadResult",
    "Sketch",
    "StrokeDataConfig",
    "StrokeDataset",
    "check_stroke_config",
    "collate_strokes",
    "display_name",
    "features_to_sketches",
    "load_kanjivg",
    "load_mnist_vectorised",
    "load_quickdraw",
    "load_sketches",
    "load_stroke_splits",
    "load_vmnist",
    "preprocess_sketch",
    "preprocess_sketches",
    "render_sketch",
    "render_sketches",
    "save_sketch_grid",
    "sequence_lengths",
    "sketch_to_features",
    "split_sketches",
    "vectorise_digit",
]
