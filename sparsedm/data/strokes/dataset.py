"""From a `StrokeDataConfig` to training batches: load, preprocess, cache, split, tensorise, collate.

`load_stroke_splits(cfg)` reads the source once, preprocesses it (`preprocess.py`) and caches the result in
`cfg.cache_dir/strokes/<name>-<hash>.npz`; the hash covers the source's identity (files, sizes, mtimes, or
the package version of built-in data) and every setting that changes the preprocessed sketches, so a
second run of the same data starts in seconds and a changed setting never reads a stale cache.

Model features, per point (ChiroDiff's "threeseqdel" / "threeseqabs" without the time channel,
dasayan05/chirodiff `data/batching.py:74-95, 139-159`):
- the first point (the origin, after preprocessing) is not a model input, as in the reference: a sketch of
  N points gives N - 1 rows, and decoding puts the origin back (main.py:471-478);
- `representation="delta"`: (dx, dy) from the previous point; `"absolute"`: (x, y);
- xy multiplied by `feature_scale` (default 10, ChiroDiff's x10: with spacing 0.05 the delta features
  have std about 0.9 on KanjiVG and 0.55 / 0.85 (x / y) on mnist-vectorised; absolute xy has std about
  0.26, so use about 4 there);
- pen 1 on the last point of a stroke, else 0 (batching.py:81-82 and 146-147: in the delta form the
  reference's pen is the difference of a stroke counter, which is the same 0/1); decoding thresholds the
  generated value at `pen_threshold` (0.8, main.py:487-488).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sparsedm.data.strokes import kanjivg, quickdraw, vectorize, vmnist
from sparsedm.data.strokes.config import StrokeDataConfig, check_stroke_config
from sparsedm.data.strokes.preprocess import preprocess_sketches
from sparsedm.data.strokes.sketch import Sketch
from sparsedm.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cache layout or the preprocessing code changes meaning (2: the reference's rules)
_PREPROCESS_KEYS = ("spacing", "min_stroke_length", "max_strokes", "stroke_overflow", "max_points", "point_overflow")
# generated sequences can diverge; decoded coordinates are clipped here so they stay finite and drawable
_DECODE_LIMIT = 1e4


def _source_identity(cfg) -> list:
    if cfg.name == "quickdraw":
        return quickdraw.quickdraw_identity(cfg.path, list(cfg.categories), cfg.format)
    if cfg.name == "kanjivg":
        return kanjivg.kanjivg_identity(cfg.path, cfg.variants)
    if cfg.name == "vmnist":
        return vmnist.vmnist_identity(cfg.path)
    return vectorize.mnist_vectorised_identity(cfg.path)


def reader_revision(cfg) -> int | None:
    """The reader's version where a source's reader has changed what it makes of the same files (VMNIST's y
    flip), else None. FID reference keys append it, so statistics of the old reading are never reused, while
    the keys of the other sources stay those of the runs already archived."""
    return vmnist.READER_VERSION if cfg.name == "vmnist" else None


def _read_source(cfg) -> list[Sketch]:
    """Parse the raw data set (the slow part that the cache avoids)."""
    subset = {"max_items": cfg.max_items, "seed": cfg.split_seed}
    if cfg.name == "quickdraw":
        result = quickdraw.load_quickdraw(cfg.path, list(cfg.categories), cfg.format, **subset)
    elif cfg.name == "kanjivg":
        result = kanjivg.load_kanjivg(cfg.path, cfg.variants, **subset)
    elif cfg.name == "vmnist":
        result = vmnist.load_vmnist(cfg.path, **subset)
    else:
        result = vectorize.load_mnist_vectorised(cfg.path, cfg.cache_dir, **subset)
    return result.sketches


def cache_path(cfg) -> Path:
    """Where the preprocessed sketches of this source + preprocessing config live."""
    subset = [cfg.max_items, cfg.split_seed] if cfg.max_items is not None else None
    key_material = [
        CACHE_VERSION,
        cfg.name,
        _source_identity(cfg),
        subset,
        {k: getattr(cfg, k) for k in _PREPROCESS_KEYS},
    ]
    digest = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / "strokes" / f"{cfg.name}-{digest}.npz"


def _save(sketches: list[Sketch], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, points=np.concatenate([s.points for s in sketches]), lengths=[len(s) for s in sketches])
    # atomic: a run killed mid-write, or two runs at once, never leave a truncated cache behind
    os.replace(tmp, path)


def _load(path: Path) -> list[Sketch]:
    with np.load(path, allow_pickle=False) as data:
        points, lengths = data["points"], data["lengths"]
    return [Sketch(p) for p in np.split(points, np.cumsum(lengths)[:-1])]


def load_sketches(cfg, progress: bool | None = None) -> list[Sketch]:
    """All preprocessed sketches of the configured source, from the cache when it is there."""
    check_stroke_config(cfg)
    path = cache_path(cfg)
    if path.is_file():
        log.info("using cached preprocessed strokes %s", path)
        return _load(path)
    raw = _read_source(cfg)
    sketches, counts = preprocess_sketches(raw, **{k: getattr(cfg, k) for k in _PREPROCESS_KEYS}, progress=progress)
    if not sketches:
        raise UserError(
            f"preprocessing dropped all {len(raw)} drawings ({dict(counts)}); "
            "raise data.max_points or set data.point_overflow=truncate"
        )
    _save(sketches, path)
    log.info("cached %d preprocessed sketches in %s", len(sketches), path)
    return sketches


def split_sketches(sketches: list[Sketch], val_fraction: float, seed: int) -> tuple[list[Sketch], list[Sketch]]:
    """Seeded random split; both sides keep the input order. At least one sketch each when possible."""
    n = len(sketches)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_ids = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(sketches) if i not in val_ids]
    val = [s for i, s in enumerate(sketches) if i in val_ids]
    return train, val


def load_stroke_splits(cfg: StrokeDataConfig, progress: bool | None = None) -> tuple[list[Sketch], list[Sketch]]:
    """(train, val) preprocessed sketches for `cfg` (a StrokeDataConfig or an OmegaConf node of one);
    progress: a bar while preprocessing (None: on a terminal only)."""
    sketches = load_sketches(cfg, progress)
    train, val = split_sketches(sketches, cfg.val_fraction, cfg.split_seed)
    log.info("strokes %s: %d train, %d validation sketches", cfg.name, len(train), len(val))
    return train, val


def sketch_to_features(sketch: Sketch, representation: str = "delta", feature_scale: float = 10.0) -> np.ndarray:
    """(N - 1, 3) float32 model features of a preprocessed sketch of N >= 2 points (see the module docstring)."""
    if len(sketch) < 2:
        raise ValueError("a sketch needs at least two points to give model features (the first one is the origin)")
    out = sketch.to_deltas()[1:] if representation == "delta" else sketch.points[1:].copy()
    out[:, :2] *= feature_scale
    return out


def features_to_sketches(
    x, lengths, representation: str = "delta", feature_scale: float = 10.0, pen_threshold: float = 0.8
) -> list[Sketch]:
    """Decode (B, L, 3) features (tensor or array) of the given lengths back into sketches, origin first.

    Always well-formed: pen = channel 2 > `pen_threshold`, with the last point forced to end a stroke,
    non-finite values set to 0 and coordinates clipped to +-1e4 so every result can be drawn.
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    lengths = lengths.detach().cpu().numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
    out = []
    for seq, n in zip(x, lengths):
        seq = np.nan_to_num(seq[: int(n)].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        xy = np.clip(seq[:, :2] / feature_scale, -_DECODE_LIMIT, _DECODE_LIMIT)
        if representation == "delta":
            xy = np.clip(np.cumsum(xy, axis=0), -_DECODE_LIMIT, _DECODE_LIMIT)
        pen = (seq[:, 2] > pen_threshold).astype(np.float64)
        points = np.concatenate([np.zeros((1, 3)), np.concatenate([xy, pen[:, None]], axis=1)])
        points[-1, 2] = 1.0
        out.append(Sketch(points))
    return out


def sequence_lengths(sketches: list[Sketch]) -> np.ndarray:
    """Model sequence length of each sketch (points - 1, int64): sample lengths for generation come from this."""
    return np.array([len(s) - 1 for s in sketches], dtype=np.int64)


class StrokeDataset(Dataset):
    """Model features of a list of sketches; item i is a FloatTensor (N_i, 3). Batch with `collate_strokes`."""

    def __init__(self, sketches: list[Sketch], representation: str = "delta", feature_scale: float = 10.0):
        self.features = [torch.from_numpy(sketch_to_features(s, representation, feature_scale)) for s in sketches]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.features[i]


def collate_strokes(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-pad to the longest item: x (B, L, 3) float, mask (B, L) bool (True = real point), lengths (B,)."""
    lengths = torch.tensor([len(item) for item in items], dtype=torch.long)
    x = torch.zeros(len(items), int(lengths.max()), 3, dtype=torch.float32)
    for i, item in enumerate(items):
        x[i, : len(item)] = item
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return {"x": x, "mask": mask, "lengths": lengths}
