"""LSUN's flips (ldm/data/lsun.py: RandomHorizontalFlip(p=0.5) on training images): the latents of each training
image and of its mirror are cached, and each sample picks one from its own seed, so a resume and any number of
ranks see the same choices."""

import numpy as np
import pytest
import torch
from ldm_helpers import ldm_overrides, train_tiny_autoencoder, write_shapes

import sparsedm.autoencoder.latents as latents_module
from sparsedm.config import load_config
from sparsedm.data.images import load_image_splits, to_model_tensor
from sparsedm.data.images.flips import mirror_choices
from sparsedm.errors import UserError
from sparsedm.tasks import build_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_flips")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "cache", root / "vq", kind="vq", steps=3)
    return root, images


def config(root, images, cache, *extra):
    overrides = [*ldm_overrides(images, root / "cache", root / "vq"), f"data.cache_dir={cache}", *extra]
    return load_config("configs/ldm_openmoji_cpu.yaml", overrides)


def test_mirrors_are_encoded_once_and_cached_beside_the_latents(tmp_path, setup, monkeypatch):
    root, images = setup
    plain_train, _ = build_task(config(root, images, tmp_path)).load_data()
    assert plain_train.mirrored_mean is None and "mirrored_mean" not in plain_train[0]
    plain_files = sorted((tmp_path / "latents").iterdir())

    task = build_task(config(root, images, tmp_path, "data.flip_p=0.5"))
    train, val = task.load_data()
    files = sorted((tmp_path / "latents").iterdir())
    assert len(files) == 2 and plain_files[0] in files  # the unflipped latents are shared with flip_p=0 runs
    assert torch.equal(train.mean, plain_train.mean) and val.mirrored_mean is None  # validation is never flipped
    assert train.mirrored_mean.shape == train.mean.shape and set(train[0]) == {"mean", "mirrored_mean"}

    # the mirrors' latents are the encoder's outputs for the mirrored images, not flipped latents
    train_images, _ = load_image_splits(task.cfg.data)
    model = task.first_stage.load("cpu")
    with torch.no_grad():
        mirrored = model.encode(to_model_tensor(np.ascontiguousarray(train_images.images[:4, :, ::-1]))).latents
    assert torch.allclose(mirrored, train.mirrored_mean[:4], atol=1e-5)
    assert not torch.allclose(train.mirrored_mean[:4], train.mean[:4].flip(-1), atol=1e-3)

    monkeypatch.setattr(latents_module, "encode", lambda *a: pytest.fail("encoded again"))
    again, _ = build_task(config(root, images, tmp_path, "data.flip_p=0.5")).load_data()
    assert torch.equal(again.mirrored_mean, train.mirrored_mean)


def test_each_sample_chooses_from_its_own_seed():
    seeds = (7 * 1_000_003 + 41) * 100_003 + torch.arange(4000)  # the trainer's seeds of one step's samples
    choices = mirror_choices(seeds, 0.5)
    assert torch.equal(choices, mirror_choices(seeds, 0.5))  # a resumed run makes the same choices
    for world_size in (2, 3):  # each rank holds seeds[rank::world_size] of the global batch
        for rank in range(world_size):
            assert torch.equal(mirror_choices(seeds[rank::world_size], 0.5), choices[rank::world_size])
    assert 0.47 < float(choices.float().mean()) < 0.53
    assert not mirror_choices(seeds, 0.0).any() and mirror_choices(seeds, 1.0).all()
    # a stream apart from the sample's noise: the choice does not follow the first draw of its generator
    first = torch.stack([torch.rand(1, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).squeeze(1)
    assert not torch.equal(choices, first < 0.5)


def test_the_loss_trains_on_the_chosen_latent(tmp_path, setup):
    root, images = setup
    task = build_task(config(root, images, tmp_path, "data.flip_p=0.5"))
    train, _ = task.load_data()
    batch = task.collate([train[i] for i in range(16)])
    seen = []
    task.diffusion.loss = lambda model_fn, x0, **kw: seen.append(x0)  # what the diffusion loss is given
    seeds = torch.arange(16) + 123
    task.loss(None, batch, seeds)
    chosen = mirror_choices(seeds, 0.5)
    assert 0 < int(chosen.sum()) < 16
    expected = torch.where(chosen.view(-1, 1, 1, 1), batch["mirrored_mean"], batch["mean"]) * task.scaling_factor
    assert torch.equal(seen[0], expected)


def test_flip_p_out_of_range_is_refused(tmp_path, setup):
    root, images = setup
    with pytest.raises(UserError, match="data.flip_p=1.5 must be a probability"):
        build_task(config(root, images, tmp_path, "data.flip_p=1.5"))
