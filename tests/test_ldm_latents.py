"""Latents: encoded once per (autoencoder, data) and read from the cache afterwards; the scaling factor
follows the rule config > 1.0 for VQ > a KL autoencoder's own > 1/std of the training latents."""

import json
import logging

import pytest
import torch
from ldm_helpers import ldm_overrides, train_tiny_autoencoder, write_shapes

import sparsedm.autoencoder.latents as latents_module
from sparsedm.autoencoder import FirstStage, cached_latents, latent_std
from sparsedm.config import load_config
from sparsedm.data.images import load_image_splits
from sparsedm.tasks import build_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_latents")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "cache", root / "vq", kind="vq", steps=3)
    train_tiny_autoencoder(images, root / "cache", root / "kl", kind="kl", steps=3)
    return root, images


@pytest.fixture
def counted(monkeypatch):
    """Counts encoder passes and image loads made by the latent cache."""
    calls = {"encode": 0, "load_images": 0}

    def encode(model, x):
        calls["encode"] += 1
        return real_encode(model, x)

    def load_images(cfg, progress=None):
        calls["load_images"] += 1
        return real_load(cfg, progress)

    real_encode, real_load = latents_module.encode, latents_module.load_image_splits
    monkeypatch.setattr(latents_module, "encode", encode)
    monkeypatch.setattr(latents_module, "load_image_splits", load_images)
    return calls


def config(root, images, autoencoder, *extra):
    return load_config("configs/ldm_openmoji_cpu.yaml", [*ldm_overrides(images, root / "cache", autoencoder), *extra])


def test_a_second_run_reads_the_cache_instead_of_encoding(tmp_path, setup, counted):
    root, images = setup
    cfg = config(root, images, root / "vq", f"data.cache_dir={tmp_path}")
    first = build_task(cfg).load_data()
    assert counted == {"encode": 9 + 1, "load_images": 1}  # 65 train / 7 val images, 8 per pass
    files = list((tmp_path / "latents").iterdir())
    assert len(files) == 1

    second_task = build_task(cfg)  # a new run: a fresh task and autoencoder object
    second = second_task.load_data()
    assert counted == {"encode": 10, "load_images": 1}  # neither images nor the encoder touched again
    assert list((tmp_path / "latents").iterdir()) == files
    for a, b in zip(first, second):
        assert torch.equal(a.mean, b.mean) and a.std is None and b.std is None
    assert len(second[0]) == 65 and len(second[1]) == 7 and second[0][0]["mean"].shape == (3, 4, 4)

    # the cached latents are the autoencoder's encodings of the split's images
    train_images, _ = load_image_splits(cfg.data)
    model = second_task.first_stage.load("cpu")
    with torch.no_grad():
        direct = model.encode(torch.stack([train_images[i] for i in range(4)])).latents
    assert torch.allclose(direct, second[0].mean[:4], atol=1e-5)


def test_another_split_or_autoencoder_encodes_again(tmp_path, setup, counted):
    root, images = setup
    cfg = config(root, images, root / "vq", f"data.cache_dir={tmp_path}")
    cached_latents(cfg.data, FirstStage(str(root / "vq")), "cpu", 64)
    cfg.data.split_seed = 1
    cached_latents(cfg.data, FirstStage(str(root / "vq")), "cpu", 64)
    cached_latents(cfg.data, FirstStage(str(root / "kl")), "cpu", 64)
    assert counted["load_images"] == 3 and len(list((tmp_path / "latents").iterdir())) == 3


def test_a_kl_posterior_is_cached_with_its_std_and_sampled_in_the_loss(tmp_path, setup):
    root, images = setup
    task = build_task(config(root, images, root / "kl", f"data.cache_dir={tmp_path}"))
    train, val = task.load_data()
    item = train[0]
    assert set(item) == {"mean", "std"} and (item["std"] > 0).all()
    batch = task.collate([train[i] for i in range(64)])
    seen = []
    task.diffusion.loss = lambda model_fn, x0, **kw: seen.append(x0)  # what the diffusion loss is given
    for seed in (0, 0, 1):
        task.loss(None, batch, torch.arange(64) + 1000 * seed)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
    eps = (seen[0] / task.scaling_factor - batch["mean"]) / batch["std"]  # z = mean + std ε, ε ~ N(0, I)
    assert abs(float(eps.mean())) < 0.1 and abs(float(eps.std()) - 1) < 0.1


def copy_with_scaling_factor(source, folder, value):
    """A copy of an autoencoder folder whose config.json states `value` (None: no scaling_factor at all)."""
    folder.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # the model, not the run files
        (folder / name).write_bytes((source / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.pop("scaling_factor")
    if value is not None:
        config["scaling_factor"] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_scaling_factor_rule(tmp_path, setup, caplog):
    """config > 1.0 for VQ (LDM-VQ-4: LatentDiffusion's scale_factor=1.0, scale_by_std=False) > a KL
    autoencoder's own > 1/std of its training latents (scale_by_std)."""
    root, images = setup
    assert json.loads((root / "vq" / "config.json").read_text())["scaling_factor"] == 1.0  # train-autoencoder's
    task = build_task(config(root, images, root / "vq"))
    task.load_data()
    assert task.scaling_factor == 1.0 and task.state_dict()["scaling_factor"] == 1.0

    # a diffusers-saved VQModel carrying Stable Diffusion's KL value: not used, and the log says so and why
    sd_value = copy_with_scaling_factor(root / "vq", tmp_path / "sd_value", 0.18215)
    with caplog.at_level(logging.INFO, logger="sparsedm"):
        task = build_task(config(root, images, sd_value))
        task.load_data()
    assert task.scaling_factor == 1.0
    assert "scaling_factor=0.18215" in caplog.text and "not used" in caplog.text
    assert "scaling factor 1.00000: a VQ autoencoder, unscaled as LDM-VQ" in caplog.text

    task = build_task(config(root, images, sd_value, "autoencoder.scaling_factor=0.5"))
    task.load_data()
    assert task.scaling_factor == 0.5

    own = json.loads((root / "kl" / "config.json").read_text())["scaling_factor"]
    task = build_task(config(root, images, root / "kl"))
    train, _ = task.load_data()
    assert task.scaling_factor == pytest.approx(own) != 1.0
    assert own == pytest.approx(1 / latent_std(train), rel=1e-4)

    # a KL folder whose config.json states none: LDM's 1/std of the training latents
    bare = copy_with_scaling_factor(root / "kl", tmp_path / "bare", None)
    task = build_task(config(root, images, bare))
    train, _ = task.load_data()
    assert task.scaling_factor == pytest.approx(1 / latent_std(train))
    assert float(latent_std(train) * task.scaling_factor) == pytest.approx(1.0, rel=1e-6)
