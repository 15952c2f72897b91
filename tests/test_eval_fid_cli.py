"""`sparsedm fid A B`: the value and --json, a run's stroke samples drawn with that run's config, bad paths.

The Inception network is replaced by pooled pixels (fid_stub), so the expected FID can be computed by hand.
"""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from fid_stub import POOLED_SIDE, PooledPixels, use_pooled_pixels

from sparsedm.cli import main
from sparsedm.config import load_config
from sparsedm.data.strokes import features_to_sketches, render_sketches
from sparsedm.runs.run_dir import RunDir

CONFIG = "configs/chirodiff_kanjivg_cpu.yaml"


@pytest.fixture(autouse=True)
def _stub(monkeypatch):
    use_pooled_pixels(monkeypatch)


def pooled_features(images: np.ndarray) -> np.ndarray:
    """What PooledPixels computes, in numpy: N x H x W x C uint8 -> N x 16."""
    n, h, w, _ = images.shape
    grey = images.astype(np.float64).mean(axis=3)
    return (
        grey.reshape(n, POOLED_SIDE, h // POOLED_SIDE, POOLED_SIDE, w // POOLED_SIDE).mean(axis=(2, 4)).reshape(n, -1)
    )


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's matrix square root: an independent route to the same number."""
    fa, fb = pooled_features(a), pooled_features(b)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    diff = fa.mean(axis=0) - fb.mean(axis=0)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(scipy.linalg.sqrtm(sa @ sb).real))


def run_fid(capsys, *args) -> tuple:
    code = main(["fid", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def test_fid_prints_the_value_and_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)[:20]
    np.savez(tmp_path / "a.npz", images=a)
    np.savez(tmp_path / "b.npz", images=b)
    expected = fid_by_hand(a, b)
    assert expected > 1

    code, out, _ = run_fid(capsys, tmp_path / "a.npz", tmp_path / "b.npz", "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"fid", "n_a", "n_b"} and (result["n_a"], result["n_b"]) == (24, 20)
    assert result["fid"] == pytest.approx(expected, rel=1e-6)

    code, out, _ = run_fid(capsys, tmp_path / "a.npz", tmp_path / "b.npz")
    assert code == 0 and out == f"fid: {result['fid']:.4f} (24 vs 20 images)"


def stroke_run(tmp_path, name: str, representation: str) -> RunDir:
    run = RunDir(tmp_path / name)
    run.write_config(load_config(CONFIG, [f"data.representation={representation}"]))
    return run


def test_a_runs_stroke_samples_are_drawn_with_that_runs_config(tmp_path, capsys):
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 20, 24)
    features = rng.normal(0, 3, (24, 20, 3)).astype(np.float32)
    features[:, :, 2] = np.where(rng.random((24, 20)) < 0.8, -1.0, 1.0)
    # pictures made without the CLI, decoding the features as absolute positions
    expected = render_sketches(features_to_sketches(features, lengths, "absolute", 10.0))
    np.savez(tmp_path / "expected.npz", images=expected)

    for representation in ("absolute", "delta"):
        run = stroke_run(tmp_path, representation, representation)
        run.samples.mkdir()
        np.savez(run.samples / "samples.npz", features=features, lengths=lengths)

    code, out, _ = run_fid(capsys, tmp_path / "absolute/samples/samples.npz", tmp_path / "expected.npz", "--json")
    assert code == 0 and json.loads(out)["n_a"] == 24
    assert abs(json.loads(out)["fid"]) < 1e-6  # the very same pictures
    # the same file under a run that says the features are deltas draws other pictures
    code, out, _ = run_fid(capsys, tmp_path / "delta/samples/samples.npz", tmp_path / "expected.npz", "--json")
    assert code == 0 and json.loads(out)["fid"] > 10


def test_bad_paths_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "loose").mkdir()
    np.savez(tmp_path / "loose" / "samples.npz", features=np.zeros((3, 4, 3)), lengths=np.full(3, 4))
    np.savez(tmp_path / "ok.npz", images=np.zeros((3, 8, 8), np.uint8))
    for path, message in [
        (tmp_path / "loose" / "samples.npz", "does not exist, so nothing says how to draw it"),
        (tmp_path / "missing.npz", "is not a folder of images or a .npz file"),
    ]:
        code, _, err = run_fid(capsys, path, tmp_path / "ok.npz")
        assert code == 2 and err.startswith("sparsedm: error:") and message in err and "\n" not in err, err


def test_the_stub_matches_its_numpy_twin():
    images = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    torch_features = PooledPixels()(torch.from_numpy(images).permute(0, 3, 1, 2)).double().numpy()
    assert np.allclose(torch_features, pooled_features(images))
