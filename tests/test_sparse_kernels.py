"""Sparse inference kernels compute what the masked dense model computes, and are swapped in only where chosen."""

import json

import pytest
import torch
from torch import nn

from sparsedm.models.chirodiff import ChiroDiffConfig, ChiroDiffDenoiser
from sparsedm.sparse.kernels.sampling import (
    CACHE_FILE,
    BlockLinear,
    SparseConv2d,
    SparseKernelsOnFirstCall,
    SparseLinear,
    candidate_layers,
    use_sparse_kernels,
)
from tests.tiny_models import tiny_unet


def sparsify_(model: nn.Module, sparsity: float, generator: torch.Generator) -> dict:
    """Zero a random `sparsity` of every >= 2-D weight; returns {name: mask}."""
    masks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                masks[name] = torch.rand(p.shape, generator=generator) >= sparsity
                p.mul_(masks[name])
    return masks


@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("kernel", ["taps", "unfold"])
def test_forced_kernels_match_the_masked_unet(kernel, backend):
    g = torch.Generator().manual_seed(0)
    model = tiny_unet().eval()
    masks = sparsify_(model, 0.8, g)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([10, 500])
    with torch.no_grad():
        expected = model(x, t).sample
    choices = use_sparse_kernels(
        model,
        lambda: model(x, t),
        names=masks,
        force=True,
        kernels=[f"{k}:{backend}" for k in (kernel, "unfold", "linear")],
    )
    swapped = {c.name for c in choices if c.kernel is not None}
    convs = [m for m in model.modules() if isinstance(m, SparseConv2d)]
    linears = [m for m in model.modules() if isinstance(m, SparseLinear)]
    # every masked conv and linear the forward reaches took a sparse kernel; strided convs take unfold
    assert len(convs) == sum(c.kind == "Conv2d" for c in choices) and linears
    assert {m.kernel for m in convs if m.stride == (1, 1)} == {kernel}
    assert {m.kernel for m in convs if m.stride != (1, 1)} == {"unfold"}
    assert len(swapped) == len(choices) and {m.backend for m in convs + linears} == {backend}
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) and f"{n}.weight" in masks for n, m in model.named_modules())
    with torch.no_grad():
        got = model(x, t).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("kernel", ["taps", "unfold"])
@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_conv_kernels_match_conv1d_and_conv2d(kernel, padding, backend):
    g = torch.Generator().manual_seed(1)
    for conv, x in (
        (nn.Conv2d(5, 7, 3, padding=padding), torch.randn(2, 5, 6, 5, generator=g)),
        (nn.Conv2d(5, 7, (1, 3), padding=(0, padding), bias=False), torch.randn(2, 5, 4, 6, generator=g)),
        (nn.Conv1d(5, 7, 3, padding=padding), torch.randn(2, 5, 9, generator=g)),
    ):
        sparsify_(conv, 0.7, g)
        torch.testing.assert_close(SparseConv2d(conv, kernel, backend)(x), conv(x), rtol=1e-5, atol=1e-6)


def test_chirodiff_linear_layers_match():
    g = torch.Generator().manual_seed(2)
    model = ChiroDiffDenoiser(ChiroDiffConfig(hidden_size=8, num_layers=1)).eval()
    masks = sparsify_(model, 0.7, g)
    x, t = torch.randn(3, 7, 3, generator=g), torch.tensor([1, 50, 900])
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 2])[:, None]
    with torch.no_grad():
        expected = model(x, t, mask)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and f"{n}.weight" in masks]
    choices = use_sparse_kernels(model, lambda: model(x, t, mask), names=masks, force=True)
    assert linears and sorted(c.name for c in choices if c.kernel == "linear:torch") == sorted(linears)
    assert isinstance(model.gru, nn.GRU)  # recurrent weights stay dense
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, mask), expected, rtol=1e-5, atol=1e-6)


def test_measured_choice_is_cached_and_reused(tmp_path):
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    sparsify_(model, 0.95, g)
    x = torch.randn(32, 64, generator=g)
    first = use_sparse_kernels(model, lambda: model(x), cache_dir=tmp_path, repeats=2)
    assert [c.name for c in first] == ["0", "2"] and all(c.speedup > 0 for c in first)
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    (entries,) = cache.values()
    assert sorted(str(k) for k, _ in entries.values()) == sorted(str(c.kernel) for c in first)
    # a doctored cache decides without timing: the next conversion of the same layers follows it
    for key in entries:
        entries[key] = ["linear:scipy", 123.0]
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    sparsify_(fresh, 0.95, torch.Generator().manual_seed(3))
    second = use_sparse_kernels(fresh, lambda: fresh(x), cache_dir=tmp_path)
    assert [c.speedup for c in second] == [123.0, 123.0]
    assert all(isinstance(fresh[i], SparseLinear) and fresh[i].backend == "scipy" for i in (0, 2))


def test_dense_layers_are_no_candidates_and_first_call_converts():
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight[:, :8] = 0
    assert list(candidate_layers(model)) == ["1"]
    x = torch.randn(5, 16, generator=g)
    with torch.no_grad():
        expected = model(x)
    plan = SparseKernelsOnFirstCall(model, force=True)
    assert plan.choices is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)  # the first call runs dense and records inputs
        assert isinstance(model[1], SparseLinear) and isinstance(model[0], nn.Linear)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert plan.swapped() == ["1"] and plan.describe() == "1 of 1 sparse layers took a sparse kernel"


def test_the_block_kernel_computes_a_tiled_dit_and_races_only_with_block_sizes():
    """A tiny DiT trained with sparse.block_size=8 (a static engine's tile masks): `linear:block` forced on every
    Linear gives the masked model's output; without block_size it is no candidate (nor where 8 does not divide)."""
    from sparsedm.models.dit import unconditional
    from sparsedm.sparse import SparseConfig, SparseEngine
    from tests.tiny_models import tiny_dit

    torch.manual_seed(0)
    model = tiny_dit().eval()
    config = SparseConfig(method="static", sparsity=0.8, block_size=8)
    engine = SparseEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), config, total_steps=1)
    with torch.no_grad():
        model.transformer_blocks[0].attn1.to_q.weight[:8, :8] *= torch.eye(8) != 0  # zeros inside an active tile
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        expected = unconditional(model, x, t)
    run = lambda: unconditional(model, x, t)  # noqa: E731
    unstructured = use_sparse_kernels(model, run, names=engine.masks, force=True, kernels=["linear:block"])
    assert unstructured == []  # no layer has an applicable kernel among those asked for
    choices = use_sparse_kernels(model, run, names=engine.masks, force=True, kernels=["linear:block"], block_size=8)
    swapped = [c for c in choices if c.kernel == "linear:block"]
    assert len(swapped) == len(choices) == 2 * 7 + 2  # per block 7 Linear, the final 2; the patch conv is no Linear
    assert isinstance(model.transformer_blocks[0].attn1.to_q, BlockLinear)
    with torch.no_grad():
        torch.testing.assert_close(unconditional(model, x, t), expected, rtol=1e-5, atol=1e-5)
