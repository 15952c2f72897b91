"""`sparsedm sweep` and `sparsedm report` on a Latent Diffusion config: 2 configurations x 2 seeds over one tiny
autoencoder, handed to 2 workers. The images are encoded once, before any worker starts, and every run reads
that cache; FID is taken on decoded images against the held-out images. FID uses pooled pixels (fid_stub)."""

import json

import numpy as np
import pytest
from fid_stub import use_pooled_pixels
from ldm_helpers import SIZE, ldm_overrides, train_tiny_autoencoder, write_shapes

from sparsedm.autoencoder import FirstStage
from sparsedm.autoencoder import latents as latents_module
from sparsedm.cli import main
from sparsedm.experiments import sweep as sweep_module
from sparsedm.tasks import ldm as ldm_module

RUNS = ["dense-seed0", "dense-seed1", "static-S0.5-seed0", "static-S0.5-seed1"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_ldm")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "ae_cache", root / "ae", steps=20)
    return images, root / "ae"


@pytest.mark.slow
def test_an_ldm_sweep_encodes_once_decodes_for_fid_and_reports(tmp_path, autoencoder, capsys, monkeypatch):
    use_pooled_pixels(monkeypatch)
    images, ae = autoencoder
    cache, out = tmp_path / "cache", tmp_path / "sweep"
    encoded, decoded = [], []
    real_encode, real_decode = latents_module.encode_images, ldm_module.decode

    def encode(model, split, *args, **options):
        encoded.append(split.name)
        return real_encode(model, split, *args, **options)

    def decode(model, z):
        decoded.append(len(z))
        return real_decode(model, z)

    monkeypatch.setattr(latents_module, "encode_images", encode)
    monkeypatch.setattr(ldm_module, "decode", decode)

    def in_process(fn, jobs, workers, progress_count, total, **options):
        """run_in_workers without spawning (test_sweep_parallel spawns real ones): what the workers would find."""
        assert workers == 2 and sorted(jobs) == RUNS
        assert len(list((cache / "latents").glob("*.npz"))) == 1  # encoded before any worker starts
        # and the held-out images' statistics, both splits' pictures and features (memorisation)
        assert len(list((cache / "fid").iterdir())) == 5
        encoded.clear()
        return {name: fn(*args) for name, args in jobs.items()}

    monkeypatch.setattr(sweep_module, "run_in_workers", in_process)
    overrides = [*ldm_overrides(images, cache, ae), "data.val_size=16", "train.steps=4"]
    grid = ["--methods", "dense", "static", "--sparsities", "0.5", "--seeds", "2", "--workers", "2"]
    evaluation = ["--num", "6", "--sample-steps", "2", "--no-progress"]
    code = main(["sweep", "configs/ldm_openmoji_cpu.yaml", *overrides, "--out", str(out), *grid, *evaluation])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4 runs: 4 trained, 0 evaluated, 0 finished before" in captured.out
    assert encoded == []  # no run encoded the images again
    # FID saw each run's samples decoded to images; the positive control decoded the training images, once
    control = json.loads((out / "runs" / RUNS[0] / "eval.json").read_text())["near_copy_control_size"]
    assert sum(decoded) == 4 * 6 + control and decoded.count(control) == 1
    cached = list((cache / "latents").glob("*.npz"))
    assert len(cached) == 1

    for name in RUNS:
        run = out / "runs" / name
        result = json.loads((run / "eval.json").read_text())
        assert result["n_samples"] == 6 and result["reference_size"] == 16 and np.isfinite(result["fid"])
        key = result["reference_key"]
        assert key.startswith("ldm/folder/val/") and key.endswith("/split-rule-2")
        assert result["autoencoder_sha256"] == FirstStage(ae).identity  # the report refuses to mix autoencoders
        samples = np.load(run / "samples" / "eval_samples.npz")
        assert samples["images"].shape == (6, SIZE, SIZE, 3) and samples["images"].dtype == np.uint8
        assert json.loads((run / "summary.json").read_text())["steps"] == 4
    results = (out / "results.md").read_text()
    assert "| Dense | – | – |" in results and "| Static-DM | 0.5 | – |" in results

    # the report alone, from the finished runs
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "| Static-DM | 0.5 | – |" in (out / "results.md").read_text()
    # a run decoded by another autoencoder (a study continued on another machine, the autoencoder trained
    # again with other weights) is not put in the same table
    moved = json.loads((out / "runs" / "dense-seed1" / "eval.json").read_text())
    (out / "runs" / "dense-seed1" / "eval.json").write_text(json.dumps({**moved, "autoencoder_sha256": "0" * 64}))
    assert main(["report", str(out)]) == 2
    assert "differ in autoencoder_sha256" in capsys.readouterr().err
