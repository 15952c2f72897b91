"""The DiT task end to end on tiny data: diffusers' DiTTransformer2DModel (one class) over the Latent Diffusion
latents, trained by `sparsedm train` masked and compact (the same masks and weights), resumed bit for bit,
narrowed for Small-Dense, swept, evaluated and reported, and exported to a DiTPipeline folder that samples in
diffusers what `sparsedm sample` samples."""

import json
import logging
import os
import subprocess

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline
from fid_stub import use_pooled_pixels
from ldm_helpers import dit_overrides, train_tiny_autoencoder, write_shapes
from test_chirodiff_train import read_metrics
from test_distributed import launcher
from tiny_models import tiny_dit

from sparsedm.cli import main
from sparsedm.config import DiTExperiment, load_config
from sparsedm.errors import UserError
from sparsedm.inference.export import load_masks
from sparsedm.models.dit import DiTConfig, dit_kwargs
from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.tasks import build_task

CONFIG = "configs/dit_openmoji_cpu.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "cache", root / "ae", steps=20)
    return root, images


def overrides(setup, *extra):
    root, images = setup
    return [*dit_overrides(images, root / "cache", root / "ae"), *extra]


def train(setup, out, *extra, flags=()):
    return main(["train", CONFIG, "--out", str(out), "--no-progress", *overrides(setup, *extra), *flags])


def test_the_default_dit_is_dit_s2():
    kwargs = dit_kwargs(DiTConfig(), sample_size=32, channels=4)
    assert (kwargs["num_attention_heads"], kwargs["attention_head_dim"], kwargs["num_layers"]) == (6, 64, 12)
    assert kwargs["patch_size"] == 2 and kwargs["num_embeds_ada_norm"] == 1 and kwargs["out_channels"] == 4


def test_the_time_embedding_is_dense_and_every_other_weight_of_the_blocks_sparse():
    model = tiny_dit()
    engine = SparseEngine(model, torch.optim.AdamW(model.parameters()), SparseConfig(method="static"), 1)
    weights = {n for n, p in model.named_parameters() if p.dim() >= 2}
    dense = weights - set(engine.masks)
    assert dense and all("timestep_embedder" in n or "class_embedder" in n for n in dense), dense
    per_block = {
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
        "norm1.linear",
    }
    for block in range(2):
        assert {f"transformer_blocks.{block}.{layer}.weight" for layer in per_block} <= set(engine.masks)
    assert {"pos_embed.proj.weight", "proj_out_1.weight", "proj_out_2.weight"} <= set(engine.masks)


def test_zero_init_starts_the_blocks_as_the_identity(setup):
    cfg = load_config(CONFIG, overrides(setup))
    model = build_task(cfg).build_denoiser()
    for layer in ("proj_out_1", "proj_out_2", "transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear"):
        assert not model.get_submodule(layer).weight.any(), layer
    assert model.get_submodule("transformer_blocks.0.attn1.to_q").weight.any()


def test_training_never_drops_the_label():
    """diffusers drops labels for classifier-free guidance from the global RNG: the output would depend on it."""
    model = tiny_dit().train()
    x, t, labels = torch.randn(64, 4, 8, 8), torch.full((64,), 500), torch.zeros(64, dtype=torch.long)
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs.append(model(x, t, labels).sample)
    assert torch.equal(*outputs)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.num_heads=3"], "model.hidden_size=32 is not divisible by model.num_heads=3 and by 4"),
        (["model.hidden_size=30"], "model.hidden_size=30 is not divisible by model.num_heads=2 and by 4"),
        (["model.patch_size=3"], "model.patch_size=3 does not divide the 4 x 4 latent"),
    ],
)
def test_bad_shapes_are_one_line_errors(setup, extra, message):
    cfg = load_config(CONFIG, overrides(setup, *extra))
    with pytest.raises(UserError, match=message):
        build_task(cfg)


def test_small_dense_narrows_the_hidden_size_among_multiples_of_the_heads_and_4(setup):
    cfg = load_config(CONFIG, overrides(setup, "sparse.method=dense", "small_dense=0.9"))
    assert isinstance(cfg, DiTExperiment)
    task = build_task(cfg)
    matched = task.matched_width()
    assert task.widths() == [4, 8, 12, 16, 20, 24, 28, 32]
    assert matched.full_width == 32 and matched.width < 32
    model = task.build_model()
    assert model.config.num_attention_heads * model.config.attention_head_dim == matched.width
    assert sum(p.numel() for p in model.parameters()) == matched.params
    # the nearest of the allowed widths: its neighbours are no closer to the sparse model's count
    for other in (matched.width - 4, matched.width + 4):
        params = sum(p.numel() for p in task.build_denoiser(other).parameters())
        assert abs(params - matched.target) >= abs(matched.params - matched.target)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    """RigL at S = 0.8 masked and with a compact plan forced, and an export of the masked one."""
    out = tmp_path_factory.mktemp("dit_runs")
    common = ["train.steps=30", "train.lr=3e-3", "sparse.method=rigl", "sparse.sparsity=0.8", "train.ema_decay=0.9"]
    for kernels in ("masked", "torch/torch/sampled"):
        assert train(setup, out / kernels.replace("/", "-"), *common, f"sparse.kernels={kernels}") == 0
    assert main(["export", str(out / "masked"), "--out", str(out / "pipeline")]) == 0
    return out


def test_training_lowers_the_loss_and_keeps_s(runs):
    val = [r["val_loss"] for r in read_metrics(runs / "masked") if "val_loss" in r]
    assert val[-1] < 0.6 * val[0], val
    summary = json.loads((runs / "masked" / "summary.json").read_text())
    assert summary["task"] == "dit" and summary["sparsity_actual"] == pytest.approx(0.8, abs=2e-3)
    assert summary["flops_forward_sparse"] < summary["flops_forward_dense"]


def assert_same_training(a: dict, b: dict) -> None:
    """Two checkpoints of the same run in two storages (or rank counts): the same masks, weights to fp32 rounding."""
    assert a["engine"]["masks"].keys() == b["engine"]["masks"].keys()
    for name, mask in a["engine"]["masks"].items():
        assert torch.equal(mask, b["engine"]["masks"][name]), name
    # A key bias adds the same q·b to every key of a query, which softmax ignores: its exact gradient is 0, and
    # Adam turns the rounding noise in its place into steps of size lr, different in each storage.
    for name, tensor in a["model"].items():
        if not name.endswith("attn1.to_k.bias"):
            torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_compact_training_gives_the_masks_and_weights_of_masked_training(runs):
    assert_same_training(
        *(load_checkpoint(list_checkpoints(runs / n / "checkpoints")[-1]) for n in ("masked", "torch-torch-sampled"))
    )


def test_block_masks_train_compact_as_masked_with_the_documented_excludes(setup, tmp_path):
    """sparse.block_size=8 (docs/configs.md's override: the patch embedding, 32 x 12, and the last projection,
    12 x 32, kept dense): the block way gives masked training's masks, all of whole 8 x 8 tiles, and weights."""
    common = ["train.steps=12", "sparse.method=rigl", "sparse.sparsity=0.8", "sparse.block_size=8"]
    common += ["sparse.exclude=[pos_embed.proj,proj_out_2]"]
    for kernels in ("masked", "block/block/block"):
        assert train(setup, tmp_path / kernels.replace("/", "-"), *common, f"sparse.kernels={kernels}") == 0
    a, b = (
        load_checkpoint(list_checkpoints(tmp_path / n / "checkpoints")[-1]) for n in ("masked", "block-block-block")
    )
    assert_same_training(a, b)
    masks = a["engine"]["masks"]
    assert "pos_embed.proj.weight" not in masks and "proj_out_2.weight" not in masks
    for name, mask in masks.items():
        tiles = mask.reshape(mask.shape[0] // 8, 8, -1, 8).any(3).any(1)
        assert torch.equal(tiles[:, None, :, None].expand(-1, 8, -1, 8).reshape(mask.shape), mask), name
    assert any(not torch.equal(a["engine"]["explored"][n], m) for n, m in masks.items())  # tiles moved


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["torch/torch/sampled", "measure"])
def test_two_ranks_with_compact_kernels_train_as_one_masked_process(setup, tmp_path, kernels):
    """torchrun, 2 CPU ranks of 8 samples with compact kernels against one masked process of 16: RigL's dense
    gradients are averaged over the ranks, so the masks are the single process's."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    common = ["train.steps=12", "sparse.method=rigl", "sparse.sparsity=0.8", "dist.check_masks=true"]
    logs = {}
    for nproc, kernel_mode in ((2, kernels), (1, "masked")):
        args = ["train", CONFIG, "--out", str(tmp_path / str(nproc)), "--no-progress", *overrides(setup, *common)]
        done = subprocess.run(
            [*launcher(nproc), *args, f"sparse.kernels={kernel_mode}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        logs[nproc] = done.stderr
    assert "compact layers" in logs[2]
    assert_same_training(*(load_checkpoint(list_checkpoints(tmp_path / n / "checkpoints")[-1]) for n in ("1", "2")))


@pytest.mark.parametrize("kernels", ["masked", "measure"])
def test_a_resumed_run_is_bit_identical(setup, tmp_path, kernels):
    common = ["train.steps=12", "sparse.method=rigl", "sparse.sparsity=0.8", f"sparse.kernels={kernels}"]
    assert train(setup, tmp_path / "full", *common) == 0
    assert train(setup, tmp_path / "split", *common, "train.stop_at=6") == 0
    assert train(setup, tmp_path / "split", *common, flags=["--resume"]) == 0
    full, split = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("full", "split"))
    assert full["weights_sha256"] == split["weights_sha256"] and full["masks_sha256"] == split["masks_sha256"]


def test_the_export_is_a_dit_pipeline_that_samples_what_sparsedm_samples(runs):
    pipeline = runs / "pipeline"
    index = json.loads((pipeline / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["transformer"] == ["diffusers", "DiTTransformer2DModel"]
    pipe = DiTPipeline.from_pretrained(pipeline)
    masks = load_masks(pipeline)
    params = dict(pipe.transformer.named_parameters())
    assert masks and all(not params[n][~m].any() for n, m in masks.items())  # the run's zeros, exactly
    images = pipe(
        class_labels=[0] * 3,
        guidance_scale=1.0,
        num_inference_steps=5,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    assert main(["sample", str(runs / "masked"), "--num", "3", "--steps", "5", "--sampler", "ddim", "--eta", "0",
                 "--seed", "7", "--no-progress"]) == 0  # fmt: skip
    ours = np.load(runs / "masked" / "samples" / "samples.npz")["images"]
    assert images.shape == ours.shape == (3, 16, 16, 3)
    assert np.abs(np.round(images * 255) - ours.astype(float)).max() <= 1
    card = (pipeline / "README.md").read_text()
    assert "diffusers:DiTPipeline" in card and "pipe = DiTPipeline.from_pretrained(folder)" in card


def test_the_compact_run_exports_and_compresses(runs, tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert main(["export", str(runs / "torch-torch-sampled"), "--out", str(out), "--compress"]) == 0
    assert "compressed transformer" in capsys.readouterr().out
    assert (out / "transformer_sparse.safetensors").is_file() and (out / "transformer").is_dir()


def test_a_sweep_evaluates_and_reports_dit_runs(setup, tmp_path, capsys, monkeypatch):
    use_pooled_pixels(monkeypatch)
    out = tmp_path / "sweep"
    grid = ["--methods", "dense", "rigl", "--sparsities", "0.8", "--seeds", "1", "--workers", "1"]
    evaluation = ["--num", "6", "--sample-steps", "2", "--no-progress"]
    extra = overrides(setup, "data.val_size=16", "train.steps=4", f"data.cache_dir={tmp_path / 'cache'}")
    assert main(["sweep", CONFIG, *extra, "--out", str(out), *grid, *evaluation]) == 0, capsys.readouterr().err
    for name in ("dense-seed0", "rigl-S0.8-p0.1-seed0"):
        result = json.loads((out / "runs" / name / "eval.json").read_text())
        assert result["reference_key"].startswith("dit/") and np.isfinite(result["fid"])
        assert result["train_cpu_s"] > 0 and result["train_wall_s"] > 0  # the training steps' seconds
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert result["train_state_bytes_total"] == summary["train_state_bytes"]["total"] > 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "RigL" in table and "Dense" in table and "| Training state |" in table, table


def test_compact_kernels_in_a_dense_run_are_said_to_have_nothing_to_act_on(setup, tmp_path, caplog):
    # a sweep's config sets sparse.kernels for its sparse runs; its Dense and Small-Dense runs say it is unused
    with caplog.at_level(logging.INFO, logger="sparsedm"):
        assert train(setup, tmp_path / "dense", "sparse.method=dense", "sparse.kernels=measure", "train.steps=2") == 0
    said = [r.getMessage() for r in caplog.records if "no sparse layer to act on" in r.getMessage()]
    assert said == ["sparse.kernels=measure has no sparse layer to act on in a dense run: it trains as masked"]
