"""`sparsedm export`: the run becomes a diffusers LDMPipeline that loads with diffusers alone, samples what
`sparsedm sample` samples, keeps the run's sparsity in its UNet weights, and carries the masks beside it."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from diffusers import LDMPipeline
from ldm_helpers import ldm_overrides, train_tiny_autoencoder, write_shapes
from omegaconf import OmegaConf
from safetensors import safe_open

from sparsedm.cli import main
from sparsedm.config import ChiroDiffExperiment, read_run_config
from sparsedm.inference.export import COMPRESSED_UNET, load_masks
from sparsedm.runs.checkpoint import load_checkpoint
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse import SparseEngine
from sparsedm.sparse.compress import load_compressed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_export")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "cache", root / "ae", steps=20)
    args = [
        "train",
        "configs/ldm_openmoji_cpu.yaml",
        "--out",
        str(root / "run"),
        "--no-progress",
        *ldm_overrides(images, root / "cache", root / "ae"),
        "train.steps=20",
        "sparse.method=rigl",
        "sparse.sparsity=0.6",
        "sparse.update_interval=5",
    ]
    assert main(args) == 0
    assert main(["export", str(root / "run"), "--out", str(root / "pipeline")]) == 0
    return root


def test_the_folder_is_an_ldm_pipeline(exported):
    pipeline = exported / "pipeline"
    assert sorted(p.name for p in pipeline.iterdir()) == [
        "README.md",
        "masks.safetensors",
        "model_index.json",
        "scheduler",
        "unet",
        "vqvae",
    ]
    index = json.loads((pipeline / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline"
    assert index["vqvae"] == ["diffusers", "VQModel"] and index["unet"] == ["diffusers", "UNet2DModel"]
    scheduler = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["beta_schedule"] == "scaled_linear"
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["num_train_timesteps"]) == (0.0015, 0.0195, 1000)


def test_diffusers_samples_what_sparsedm_samples(exported):
    pipe = LDMPipeline.from_pretrained(exported / "pipeline")
    state = load_checkpoint(sorted((exported / "run" / "checkpoints").iterdir())[-1])
    assert pipe.vqvae.config.scaling_factor == pytest.approx(state["task"]["scaling_factor"])
    images = pipe(
        batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(7), output_type="np"
    ).images
    assert images.shape == (3, 16, 16, 3) and np.isfinite(images).all()

    assert (
        main(
            [
                "sample",
                str(exported / "run"),
                "--num",
                "3",
                "--steps",
                "5",
                "--sampler",
                "ddim",
                "--eta",
                "0",
                "--seed",
                "7",
                "--no-progress",
            ]
        )
        == 0
    )
    ours = np.load(exported / "run" / "samples" / "samples.npz")["images"]
    assert np.abs(np.round(images * 255).astype(int) - ours).max() <= 1


def sample(run, *options):
    args = ["sample", str(run), "--num", "3", "--steps", "4", "--seed", "5", "--no-progress", *options]
    assert main(args) == 0
    with np.load(run / "samples" / "samples.npz") as samples:
        return {key: samples[key] for key in samples}


def test_sparse_kernels_sample_the_same_images(exported, caplog):
    plain = sample(exported / "run")
    with caplog.at_level(logging.INFO, logger="sparsedm.inference.sampling"):
        sparse = sample(exported / "run", "--sparse-kernels", "all")
    (message,) = [r.getMessage() for r in caplog.records if "sparse kernels" in r.getMessage()]
    swapped, candidates = map(int, re.match(r"sparse kernels: (\d+) of (\d+)", message).groups())
    assert swapped == candidates > 10  # the UNet's masked convs and linears all took a sparse kernel
    np.testing.assert_allclose(sparse["latents"], plain["latents"], rtol=1e-4, atol=1e-4)
    assert np.abs(sparse["images"].astype(int) - plain["images"]).max() <= 1


def test_export_compress_writes_the_unet_bit_identically_in_a_fifth(exported, tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert main(["export", str(exported / "run"), "--out", str(out), "--compress"]) == 0
    ratio = float(re.search(r"compressed UNet \(([\d.]+)x of dense fp32\)", capsys.readouterr().out).group(1))
    assert 0.4 < ratio < 0.6  # S = 0.6: 0.4 x 4 + 1/8 bytes per sparse entry, biases and norms dense
    unet = LDMPipeline.from_pretrained(out).unet  # diffusers still loads the folder
    state, masks = load_compressed(out / COMPRESSED_UNET)
    assert set(state) == set(unet.state_dict())
    assert all(torch.equal(state[n].view(torch.uint8), t.view(torch.uint8)) for n, t in unet.state_dict().items())
    assert set(masks) == set(load_masks(out)) and all(torch.equal(masks[n], m) for n, m in load_masks(out).items())


def test_the_exported_unet_has_the_run_sparsity(exported):
    pipeline, run = exported / "pipeline", RunDir(exported / "run")
    summary = run.read_summary()
    state = load_checkpoint(sorted(run.checkpoints.iterdir())[-1])
    masks = load_masks(pipeline)
    assert set(masks) == set(state["engine"]["masks"]) and all(
        torch.equal(masks[n], state["engine"]["masks"][n]) for n in masks
    )

    weights = LDMPipeline.from_pretrained(pipeline).unet.state_dict()
    zeros = sum(int((weights[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert zeros / total == pytest.approx(
        summary["sparsity_actual"], abs=0.01
    )  # 0.6: the masked entries, a few active zeros
    for name, mask in masks.items():
        assert (weights[name][~mask] == 0).all()
        assert torch.equal(weights[name], state["ema"]["module"][name])
    with safe_open(pipeline / "masks.safetensors", framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["sparse"])["method"] == "rigl" and float(metadata["sparsity"]) == pytest.approx(
        summary["sparsity_actual"]
    )


def test_the_masks_fit_an_engine_built_from_the_exported_unet(exported):
    """What continuing sparse training needs: the same tensors, each with its allotted number of non-zeros."""
    unet = LDMPipeline.from_pretrained(exported / "pipeline").unet
    cfg = read_run_config(RunDir(exported / "run"))
    engine = SparseEngine(unet, torch.optim.AdamW(unet.parameters()), cfg.sparse, total_steps=20)
    masks = load_masks(exported / "pipeline")
    assert set(masks) == set(engine.masks)
    assert all(int(masks[n].sum()) == engine.nonzeros[n] for n in masks)
    engine.load_masks(masks)
    assert all(torch.equal(engine.masks[n], masks[n]) for n in masks)
    assert all((engine.params[n][~masks[n]] == 0).all() for n in masks)


def test_export_refuses_bad_input(exported, tmp_path, capsys):
    assert main(["export", str(exported / "run"), "--out", str(exported / "pipeline")]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "p")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    chiro = tmp_path / "chiro"
    chiro.mkdir()
    (chiro / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(ChiroDiffExperiment)))
    assert main(["export", str(chiro), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a task=chirodiff run; export writes diffusers pipelines of Latent Diffusion" in err and "\n" not in err


def test_export_says_so_in_one_line_when_the_runs_ema_is_not_sparse(exported, tmp_path, caplog):
    """An EMA the engine did not keep sparse (a bug, a hand-edited checkpoint) is reported, not silently zeroed."""
    run = RunDir(exported / "run")
    state = load_checkpoint(sorted(run.checkpoints.iterdir())[-1])
    name, mask = next((n, m) for n, m in state["engine"]["masks"].items() if not m.all())  # ERK leaves some dense
    state["ema"]["module"][name] = state["ema"]["module"][name] + 0.5 * ~mask  # non-zero at every masked position
    torch.save(state, tmp_path / "step_dense_ema.pt")
    out = tmp_path / "pipeline"
    with caplog.at_level(logging.WARNING, logger="sparsedm.sparse.sparsity_check"):
        assert (
            main(["export", str(run.path), "--out", str(out), "--checkpoint", str(tmp_path / "step_dense_ema.pt")]) == 0
        )
    (message,) = [r.getMessage() for r in caplog.records if r.name == "sparsedm.sparse.sparsity_check"]
    assert f"is not sparse: {int((~mask).sum())} non-zero weights at masked positions in 1 of" in message
    assert "the exported UNet has them zeroed" in message and "\n" not in message
    assert (LDMPipeline.from_pretrained(out).unet.state_dict()[name][~mask] == 0).all()
