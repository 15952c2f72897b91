"""Fréchet Inception Distance offline on CPU, equal to torch-fidelity's (the paper's tool).

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))        (Heusel et al. 2017, eq. 6)

Features come from `sparsedm.eval.inception` (the same network, input scaling and TF1 resize as
torch-fidelity). Statistics are accumulated in float64 batch by batch, so memory does not grow with the
number of images; the distance is computed in float64 with torch-fidelity's current formula,
tr((S_a S_b)^(1/2)) = sum of the square roots of the eigenvalues of S_a S_b.

Why not torchmetrics' `FrechetInceptionDistance`: it keeps running sums with no public way to load or save
mu/sigma (needed for cached reference statistics), and `compute()` casts the result back to the features'
float32. Its formula is the same eigenvalue one used here.

Image sources: a folder of image files (read like torch-fidelity: PIL `convert("RGB")`) or a `.npz` with an
uint8 `images` array. A `.npz` without `images` (e.g. a stroke run's `features`/`lengths`) can be turned into
images by the caller's `npz_to_images`.
"""

import hashlib
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from sparsedm.errors import UserError
from sparsedm.eval.inception import load_inception
from sparsedm.progress import progress_bar
from sparsedm.runs.files import writing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BACKENDS = ("sparsedm", "torch-fidelity")
# Stored in every cache file; change it whenever the features change so old statistics are recomputed.
FEATURES_TAG = "inception-v3-tf2015-pool3/tf1-bilinear-299"


class Statistics(NamedTuple):
    """Gaussian fit of a set's features: mean (d,), covariance (d, d) with the n - 1 divisor, both float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


class ImageBatches:
    """Re-iterable uint8 batches N x C x H x W (C = 1 or 3) with the number of images known up front."""

    def __init__(self, num_images: int, make_batches: Callable[[], Iterator[torch.Tensor]]):
        self.num_images = num_images
        self._make_batches = make_batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._make_batches()


def fid_from_statistics(a: Statistics, b: Statistics) -> float:
    """The Fréchet distance between two Gaussian fits, in float64."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"statistics of different feature sizes: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    # S_a S_b is similar to the PSD matrix S_a^½ S_b S_a^½, so its eigenvalues are real and >= 0 up to
    # rounding, which moves the zero ones (many, when n < d) by up to eps |S|^2: negative ones get imaginary
    # roots that .real drops, the others leave a floor of at most d sqrt(eps) |S| in the FID.
    # torch.linalg.eigvals always returns complex values, so no real negative reaches sqrt (numpy's eigvals
    # returns a real array when it can, and NaN roots). torch rather than scipy also keeps this heavy step
    # in Inception's thread pool, under the same torch.set_num_threads setting.
    product = torch.as_tensor(a.sigma, dtype=torch.float64) @ torch.as_tensor(b.sigma, dtype=torch.float64)
    tr_covmean = torch.linalg.eigvals(product).sqrt().real.sum().item()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def _feature_chunks(
    images_iter: Iterable[torch.Tensor | np.ndarray],
    batch_size: int,
    device: str | torch.device,
    progress: bool,
    extractor: torch.nn.Module | None,
) -> Iterator[torch.Tensor]:
    """The extractor's float64 features (on the CPU) of each chunk of at most `batch_size` images."""
    device = torch.device(device)
    if extractor is None:
        extractor = load_inception(device)
    bar = progress_bar(
        total=getattr(images_iter, "num_images", None), unit="img", desc="FID features", disable=not progress
    )
    with torch.inference_mode(), bar:
        for batch in images_iter:
            for chunk in torch.as_tensor(batch).split(batch_size):
                yield extractor(chunk.to(device)).double().cpu()
                bar.update(len(chunk))


def compute_statistics(
    images_iter: Iterable[torch.Tensor | np.ndarray],
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    extractor: torch.nn.Module | None = None,
) -> Statistics:
    """Mean and covariance of the features of uint8 batches N x C x H x W (any batch sizes, C = 1 or 3).

    `extractor` maps such a batch to N x d features; the FID Inception network by default. Batches are
    split to at most `batch_size` images per forward pass. Moments are merged per batch with Chan et al.'s
    pairwise update, which stays accurate where a running sum of x x^T minus n mu mu^T would cancel, and
    memory does not grow with the number of images (see `extract_features` to keep the features).
    """
    n, mu, scatter = 0, None, None  # scatter = sum over images of (x - mu)(x - mu)^T, float64 on CPU
    for features in _feature_chunks(images_iter, batch_size, device, progress, extractor):
        m = len(features)
        chunk_mu = features.mean(dim=0)
        centred = features - chunk_mu
        chunk_scatter = centred.T @ centred
        if mu is None:
            n, mu, scatter = m, chunk_mu, chunk_scatter
        else:
            delta = chunk_mu - mu
            scatter += chunk_scatter + torch.outer(delta, delta) * (n * m / (n + m))
            mu = mu + delta * (m / (n + m))
            n += m
    if n < 2:
        raise UserError(f"FID needs at least 2 images per set, got {n}; 10,000 or more give a stable value")
    return Statistics(mu.numpy(), (scatter / (n - 1)).numpy(), n)


def extract_features(
    images_iter: Iterable[torch.Tensor | np.ndarray],
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    extractor: torch.nn.Module | None = None,
) -> np.ndarray:
    """The N x d float64 features of the images (all in memory: for sample sets and splits of a few thousand)."""
    chunks = list(_feature_chunks(images_iter, batch_size, device, progress, extractor))
    if not chunks:
        raise UserError("no images to compute features of")
    return torch.cat(chunks).numpy()


def statistics_of(features: np.ndarray) -> Statistics:
    """The Gaussian fit of N x d features (equal to `compute_statistics` of their images, to rounding)."""
    n = len(features)
    if n < 2:
        raise UserError(f"FID needs at least 2 images per set, got {n}; 10,000 or more give a stable value")
    features = np.asarray(features, dtype=np.float64)
    mu = features.mean(axis=0)
    centred = features - mu
    return Statistics(mu, centred.T @ centred / (n - 1), n)


def _cache_path(cache_dir: str | os.PathLike, key: str, kind: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    # The hash keeps keys that share a slug ("a/b", "a_b") apart.
    suffix = "" if kind == "statistics" else f"-{kind}"
    return Path(cache_dir) / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}{suffix}.npz"


def _write_cache(path: Path, key: str, **arrays) -> None:
    """Written atomically, so an interrupted run never leaves a half-written cache."""
    with writing("the FID cache goes there: remove what is in the way, or set another data.cache_dir"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as file:
            temporary = Path(file.name)
            try:
                np.savez(file, key=key, features=FEATURES_TAG, **arrays)
                file.close()
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)


def cached_reference_statistics(
    key: str,
    images_fn: Callable[[], Iterable[torch.Tensor | np.ndarray]],
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    features_fn: Callable[[], np.ndarray] | None = None,
) -> Statistics:
    """Statistics of a reference set (e.g. key "mnist/train"), computed once and then read from `cache_dir`.

    `images_fn` is called only on a cache miss. With `features_fn` (the set's N x d features, for a set whose
    features are kept anyway, e.g. by `cached_reference_features`), a miss takes the statistics of those instead,
    so the set goes through Inception once, not twice. An unreadable cache file, or one written for another key
    or other features, is recomputed with a warning, never fatal.
    """
    path = _cache_path(cache_dir, key, "statistics")
    cached = _read_statistics(path, key)
    if cached is not None:
        return cached
    if features_fn is not None:
        statistics = statistics_of(features_fn())
    else:
        statistics = compute_statistics(images_fn(), batch_size=batch_size, device=device, progress=progress)
    mu, sigma, n = statistics
    _write_cache(path, key, mu=mu, sigma=sigma, n=n)
    return statistics


def cached_array(key: str, kind: str, compute: Callable[[], np.ndarray], cache_dir: str | os.PathLike) -> np.ndarray:
    """An array computed once for `key` (e.g. a split's features or rendered images), then read from
    `cache_dir`; an unreadable file is recomputed with a warning, as the statistics are."""
    path = _cache_path(cache_dir, key, kind)
    cached = _read_cached(path, key, lambda data: data["values"])
    if cached is not None and (cached.ndim < 2 or len(cached) < 2):
        warnings.warn(f"ignoring cache {path} (an array of the wrong shape); recomputing it", stacklevel=2)
        cached = None
    if cached is not None:
        return cached
    values = compute()
    _write_cache(path, key, values=values)
    return values


def cached_reference_features(
    key: str,
    images_fn: Callable[[], Iterable[torch.Tensor | np.ndarray]],
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """The N x d features of a reference set, computed once and then read from `cache_dir` (as
    `cached_reference_statistics`; kept as float32, 8 kB per image)."""

    def compute() -> np.ndarray:
        features = extract_features(images_fn(), batch_size=batch_size, device=device, progress=progress)
        return features.astype(np.float32)

    return cached_array(key, "features", compute, cache_dir).astype(np.float64)


def _read_cached(path: Path, key: str, read: Callable):
    """read(the open npz) of the cache file for `key`; None if absent or (with a warning) unusable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key or str(data["features"]) != FEATURES_TAG:
                raise ValueError("written for another key or other features")
            return read(data)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring FID cache {path} ({error}); recomputing it", stacklevel=3)
        return None


def _read_statistics(path: Path, key: str) -> Statistics | None:
    """The statistics cached at `path` for `key`; None if absent or (with a warning) unusable."""
    found = _read_cached(path, key, lambda data: (data["mu"], data["sigma"], int(data["n"])))
    if found is None:
        return None
    mu, sigma, n = found
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.shape != (d,) or sigma.shape != (d, d) or n < 2 or not np.isfinite(sigma).all():
        warnings.warn(f"ignoring FID cache {path} (arrays of the wrong shape or values); recomputing it", stacklevel=3)
        return None
    return Statistics(mu.astype(np.float64), sigma.astype(np.float64), n)


def load_images(
    path: str | os.PathLike,
    *,
    batch_size: int = 50,
    npz_to_images: Callable[[np.lib.npyio.NpzFile], np.ndarray] | None = None,
) -> ImageBatches:
    """Images of a folder or a `.npz` file, as uint8 batches N x C x H x W of at most `batch_size` images.

    A folder is searched recursively for png/jpg/jpeg/webp/bmp files, read in sorted order.
    A `.npz` must hold `images`, uint8 N x H x W x C (C = 1 or 3) or N x H x W. Without it, `npz_to_images`
    (if given) turns the open file into such an array, e.g. rasterising a stroke run's `features`/`lengths`.
    Folder images are decoded lazily; consecutive images of one size share a batch.
    """
    path = Path(path)
    if _is_folder(path):
        files = _list_image_files(path)
        return ImageBatches(len(files), lambda: _folder_batches(files, batch_size))
    array = _read_npz(path, npz_to_images)
    return ImageBatches(len(array), lambda: iter(torch.from_numpy(array).split(batch_size)))


def array_batches(images: np.ndarray, *, batch_size: int = 50) -> ImageBatches:
    """uint8 images N x H x W x C (C = 1 or 3) held in memory, e.g. a task's renderings, as `ImageBatches`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"expected uint8 images N x H x W x C, C = 1 or 3; got {images.dtype} {images.shape}")
    channels_first = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return ImageBatches(len(images), lambda: iter(channels_first.split(batch_size)))


def _is_folder(path: Path) -> bool:
    """True for a folder, False for a .npz file; UserError for anything else."""
    if path.is_dir():
        return True
    if path.is_file() and path.suffix == ".npz":
        return False
    raise UserError(f"{path} is not a folder of images or a .npz file")


def _list_image_files(folder: Path) -> list[Path]:
    # os.walk, not Path.rglob, so symlinked folders are handled as torch-fidelity's os.walk handles them.
    files = sorted(
        Path(root) / name
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}; check the path")
    return files


def _folder_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[np.ndarray] = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("RGB"))  # as torch-fidelity reads files
        except OSError as error:
            raise UserError(f"cannot read image {file} ({error}); remove or replace it") from error
        if batch and (len(batch) == batch_size or pixels.shape != batch[0].shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(pixels)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def _read_npz(path: Path, npz_to_images: Callable[[np.lib.npyio.NpzFile], np.ndarray] | None) -> np.ndarray:
    """The uint8 N x C x H x W images of a .npz file (see `load_images`)."""
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise UserError(f"cannot read {path} as a .npz file ({error}); check that it is complete") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds one array, not a .npz archive; save with np.savez(path, images=...)")
    with data:
        if "images" in data.files:
            try:
                images = data["images"]
            except unreadable as error:
                raise UserError(f"cannot read 'images' in {path} ({error}); is it complete?") from error
        elif npz_to_images is not None:
            images = npz_to_images(data)
        else:
            raise UserError(
                f"{path} has no 'images' array (it has {', '.join(data.files) or 'nothing'}); "
                "save uint8 images N x H x W x C under the key 'images', or give a folder of images"
            )
    channels = images.shape[3] if images.ndim == 4 else 1
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or channels not in (1, 3):
        raise UserError(
            f"{path}: images must be uint8 N x H x W x C with C = 1 or 3, or N x H x W; got {images.dtype} "
            f"{images.shape} (convert floats in [0, 1] with (x * 255).round().astype(np.uint8))"
        )
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def fid_between(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    *,
    backend: str = "sparsedm",
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    npz_to_images: Callable[[np.lib.npyio.NpzFile], np.ndarray] | None = None,
) -> dict[str, float | int]:
    """FID between two image sources (folders or .npz, see `load_images`): {"fid", "n_a", "n_b"}.

    backend="sparsedm" runs offline on CPU or GPU. backend="torch-fidelity" calls the paper's tool itself
    (it needs torchvision) with the same file selection: recursive, the same extensions.
    """
    if backend == "sparsedm":
        a, b = (
            compute_statistics(
                load_images(path, batch_size=batch_size, npz_to_images=npz_to_images),
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
            for path in (path_a, path_b)
        )
        return {"fid": fid_from_statistics(a, b), "n_a": a.n, "n_b": b.n}
    if backend == "torch-fidelity":
        return _fid_with_torch_fidelity(
            path_a,
            path_b,
            batch_size=batch_size,
            device=torch.device(device),
            progress=progress,
            npz_to_images=npz_to_images,
        )
    raise UserError(f"unknown FID backend {backend!r}; use one of {', '.join(BACKENDS)}")


class _ArrayDataset(torch.utils.data.Dataset):
    """uint8 N x C x H x W images as the 3 x H x W items torch-fidelity reads from a dataset."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index]).expand(3, -1, -1)


def _fid_with_torch_fidelity(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
    npz_to_images: Callable[[np.lib.npyio.NpzFile], np.ndarray] | None,
) -> dict[str, float | int]:
    try:
        import torch_fidelity
    except ImportError as error:
        raise UserError(
            f"the torch-fidelity backend is not available ({error}); `pip install torch-fidelity` on a "
            "machine where torchvision works, or use backend='sparsedm', which gives the same FID"
        ) from error
    inputs, counts = [], []
    for path in map(Path, (path_a, path_b)):
        if _is_folder(path):
            inputs.append(str(path))
            counts.append(len(_list_image_files(path)))
        else:
            images = _read_npz(path, npz_to_images)
            inputs.append(_ArrayDataset(images))
            counts.append(len(images))
    metrics = torch_fidelity.calculate_metrics(
        input1=inputs[0],
        input2=inputs[1],
        fid=True,
        cuda=device.type == "cuda",
        batch_size=batch_size,
        verbose=progress,
        samples_find_deep=True,
        samples_find_ext=",".join(extension[1:] for extension in IMAGE_EXTENSIONS),
    )
    return {"fid": float(metrics["frechet_inception_distance"]), "n_a": counts[0], "n_b": counts[1]}
