"""Compressed weights load back bit for bit and shrink with sparsity: <= 0.2x of dense fp32 at S = 0.9."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from sparsedm.errors import UserError
from sparsedm.models.unet import UNetConfig, build_unet
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.compress import dense_bytes, load_compressed, save_compressed
from tests.tiny_models import tiny_unet


def engine_masks(model, sparsity, distribution):
    config = SparseConfig(method="static", sparsity=sparsity, distribution=distribution)
    return SparseEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), config, total_steps=10).masks


def assert_bit_identical(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].contiguous().view(torch.uint8)), name


@pytest.mark.parametrize("with_masks", [True, False])
def test_round_trip_is_bit_identical(tmp_path, with_masks):
    model = tiny_unet()
    masks = engine_masks(model, 0.8, "erk")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(iter(masks))
    # awkward bits: -0.0 and NaN outside the mask, an active exact zero, a bf16 and an integer tensor
    flat = state[name].view(-1)
    off = (~masks[name]).view(-1).nonzero()[:2, 0]
    on = masks[name].view(-1).nonzero()[0, 0]
    flat[off[0]], flat[off[1]], flat[on] = -0.0, math.nan, 0.0
    state["extra.bf16"] = torch.randn(4, 4).to(torch.bfloat16) * (torch.rand(4, 4) > 0.8)
    state["extra.steps"] = torch.arange(5)
    save_compressed(tmp_path / "w.safetensors", state, masks if with_masks else None, metadata={"step": "3"})
    loaded, stored_masks = load_compressed(tmp_path / "w.safetensors")
    assert_bit_identical(loaded, state)
    if with_masks:
        assert set(stored_masks) == set(masks)
        widened = stored_masks[name] & ~masks[name]
        assert int(widened.sum()) == 2  # -0.0 and NaN kept; elsewhere the training mask itself
        assert all(torch.equal(stored_masks[n], masks[n]) for n in masks if n != name)
    model.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("extra.")})


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_cpu_ldm_unet_at_s09_takes_at_most_a_fifth_of_dense(tmp_path, distribution, capsys):
    cfg = OmegaConf.load("configs/ldm_openmoji_cpu.yaml")
    model = build_unet(UNetConfig(**cfg.model), 8, 3)
    masks = engine_masks(model, 0.9, distribution)
    state = model.state_dict()
    size = save_compressed(tmp_path / "unet.safetensors", state, masks)
    ratio = size / dense_bytes(state)
    with capsys.disabled():
        print(f"\ncompressed / dense fp32 bytes at S = 0.9 {distribution}: {ratio:.3f}")
    assert ratio <= 0.2
    # it is the sparsity that shrinks it: a dense model's weights are stored as they are (without LDM's
    # zero-initialised layers, which would be stored sparse since that is smaller)
    dense = build_unet(UNetConfig(**{**cfg.model, "zero_init": False}), 8, 3).state_dict()
    assert save_compressed(tmp_path / "dense.safetensors", dense) > 0.99 * dense_bytes(dense)


def test_not_a_compressed_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="is not a compressed sparsedm file"):
        load_compressed(tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        load_compressed(tmp_path / "missing.safetensors")
