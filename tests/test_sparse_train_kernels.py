"""The ways of computing a sparse layer's products (sparse/kernels/products.py) give the dense masked path's
outputs and gradients, here through benchmarks/training_kernels.py's masked layers, which are also chosen by
measurement (through sparsedm's measure-choose-cache mechanism)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernel_plan import WAYS
from sparsedm.sparse.kernels.products import MaskPattern

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import sparseprop_kernels  # noqa: E402
from training_kernels import (  # noqa: E402
    CACHE_FILE,
    MODULE,
    MaskedSparseConv,
    MaskedSparseLinear,
    parse_plan,
    refresh_patterns,
    sparse_train_module,
    use_sparse_training_kernels,
)

# fp32 sums in another order: relative error ~1e-6 on these sizes; atol for entries that cancel to ~0
TOL = dict(rtol=1e-5, atol=1e-5)
PLANS = [
    ("torch", "torch", "sampled"),
    ("scipy", "scipy", "sampled"),
    ("matmul", "torch", "matmul"),
    ("torch", "scipy", "matmul"),
]


def masked_(module: nn.Module, sparsity: float, g: torch.Generator) -> torch.Tensor:
    mask = torch.rand(module.weight.shape, generator=g) >= sparsity
    with torch.no_grad():
        module.weight.mul_(mask)
    return mask


def dense_reference(module, mask, x, dy):
    """The masked path the engine runs: dense forward and backward, then the weight gradient masked."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = (x.grad, module.weight.grad * mask, None if module.bias is None else module.bias.grad)
    module.zero_grad(set_to_none=True)
    return y.detach(), grads


def sparse_run(layer, x, dy):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    grads = (x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    return y.detach(), grads


def check_equal(module, mask, x, plan):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        dy = torch.randn(module(x).shape, generator=g)
    y_ref, grads_ref = dense_reference(module, mask, x, dy)
    y, grads = sparse_run(sparse_train_module(module, mask, plan), x, dy)
    torch.testing.assert_close(y, y_ref, **TOL)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, **TOL)
    assert (grads[1][~mask] == 0).all()  # exactly zero where masked, not merely small


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_the_dense_masked_path(plan, batch, bias):
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    mask = masked_(linear, 0.8, g)
    check_equal(linear, mask, torch.randn(batch, 7, 24, generator=g), plan)  # (..., in) inputs


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "geometry",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=1),
        dict(kernel_size=(3, 2), padding=(0, 1), dilation=(2, 1)),
        dict(kernel_size=3, padding="same"),
    ],
)
def test_conv2d_matches_the_dense_masked_path(plan, batch, geometry):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 10, **geometry)
    mask = masked_(conv, 0.7, g)
    check_equal(conv, mask, torch.randn(batch, 6, 9, 8, generator=g), plan)


@pytest.mark.parametrize("plan", PLANS[:2])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("geometry", [dict(kernel_size=5, padding=2), dict(kernel_size=3, stride=2)])
def test_conv1d_matches_the_dense_masked_path(plan, batch, geometry):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv1d(5, 8, **geometry)
    mask = masked_(conv, 0.6, g)
    check_equal(conv, mask, torch.randn(batch, 5, 17, generator=g), plan)


def test_float64_and_active_weights_that_are_zero():
    """Grown weights start at zero: the pattern follows the mask, not the weight's non-zeros."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(12, 9).double()
    mask = masked_(linear, 0.5, g)
    with torch.no_grad():
        linear.weight[mask.nonzero()[:5].unbind(1)] = 0.0
    x = torch.randn(3, 12, generator=g, dtype=torch.float64)
    for plan in PLANS:
        check_equal(linear, mask, x, plan)
    layer = MaskedSparseLinear(linear, mask, PLANS[0])
    layer(x).sum().backward()
    assert (linear.weight.grad[mask] != 0).sum() > (linear.weight[mask] != 0).sum()  # zero weights get gradients


def test_pattern_orders_and_values():
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    w = torch.arange(6.0).view(2, 3) * mask
    p = MaskPattern(mask)
    assert p.nnz == 3 and p.index.tolist() == [0, 2, 5] and p.gather(w).tolist() == [0.0, 2.0, 5.0]
    values = p.gather(w)
    assert p.csr(values).to_dense().equal(w) and p.csr_t(values).to_dense().equal(w.t())
    assert torch.from_numpy(p.scipy(values).toarray()).equal(w)
    assert p.scatter(torch.tensor([7.0, 8.0, 9.0])).tolist() == [[7.0, 0.0, 8.0], [0.0, 0.0, 9.0]]
    mask2 = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool)  # CSR values: (0,0) (0,1) (1,1) (2,0)
    p2 = MaskPattern(mask2)
    assert p2._transpose[2].tolist() == [0, 3, 1, 2]  # Wᵀ's rows are W's columns: (0,0) (2,0) | (0,1) (1,1)
    w2 = torch.arange(1.0, 7.0).view(3, 2) * mask2
    assert p2.csr_t(p2.gather(w2)).to_dense().equal(w2.t())


def test_refresh_follows_a_new_mask():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Conv1d(8, 4, 3))
    lin_mask = masked_(model[0], 0.5, g)
    model[0] = MaskedSparseLinear(model[0], lin_mask, PLANS[0])
    new_mask = torch.rand(8, 8, generator=g) >= 0.5
    with torch.no_grad():
        model[0].weight.mul_(new_mask)
    assert refresh_patterns(model, {"0.weight": new_mask, "2.weight": torch.ones(4, 8, 3, dtype=torch.bool)}) == 1
    model[0](torch.randn(2, 8, generator=g)).sum().backward()
    assert ((model[0].weight.grad != 0) == new_mask).all()


def test_unknown_plan_says_what_to_write():
    with pytest.raises(UserError, match="FWD/DX/DW"):
        parse_plan("linear:matmul/mkl/sampled")
    assert parse_plan("unfold:scipy/torch/sampled") == ("scipy", "torch", "sampled")
    assert set(WAYS) == {"fwd", "dx", "dw"}


def tiny_net():
    return nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 64))


def test_choice_by_measurement_swaps_exactly_the_faster_layers_and_caches_them(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = tiny_net()
    masks = {f"{i}.weight": masked_(model[i], 0.95, g) for i in (0, 3)}
    reference = tiny_net()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, 6, 6, generator=g)
    choices = use_sparse_training_kernels(model, lambda: model(x), masks, cache_dir=tmp_path, repeats=2)
    assert [c.name for c in choices] == ["0", "3"]
    for c in choices:
        swapped = type(model.get_submodule(c.name)) not in (nn.Conv2d, nn.Linear)  # ours or sparseprop's
        assert swapped == (c.plan != MODULE) and c.speedup is not None and c.speedup > 0
        assert c.plan == MODULE or c.speedup >= 1.05
        assert c.density == pytest.approx(float(masks[f"{c.name}.weight"].float().mean()))
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    (entries,) = cached.values()
    assert sorted(plan for plan, _ in entries.values()) == sorted(c.plan for c in choices)
    # a second conversion reads the cache: the same plans, and the same numbers as the masked model
    again = tiny_net()
    again.load_state_dict(reference.state_dict())
    assert [c.plan for c in use_sparse_training_kernels(again, lambda: again(x), masks, cache_dir=tmp_path)] == [
        c.plan for c in choices
    ]
    loss, loss_ref = model(x).square().sum(), reference(x).square().sum()
    loss.backward()
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, **TOL)
    params = dict(model.named_parameters())  # the same names as before the swap
    assert list(params) == [name for name, _ in reference.named_parameters()]
    assert list(model.state_dict()) == list(reference.state_dict())
    for name, p in reference.named_parameters():
        mask = masks.get(name, torch.ones_like(p, dtype=torch.bool))
        torch.testing.assert_close(params[name].grad * mask, p.grad * mask, **TOL)  # the engine masks dense ones


def test_forced_plan_swaps_every_masked_layer():
    g = torch.Generator().manual_seed(0)
    model = tiny_net()
    masks = {f"{i}.weight": masked_(model[i], 0.5, g) for i in (0, 3)}
    x = torch.randn(1, 4, 6, 6, generator=g)
    choices = use_sparse_training_kernels(model, lambda: model(x), masks, force="scipy/torch/sampled")
    assert [c.plan for c in choices] == ["unfold:scipy/torch/sampled", "linear:scipy/torch/sampled"]
    assert isinstance(model[0], MaskedSparseConv) and isinstance(model[3], MaskedSparseLinear)
    assert all(c.speedup is None for c in choices)


needs_sparseprop = pytest.mark.skipif(not sparseprop_kernels.AVAILABLE, reason="sparseprop is not installed")


@needs_sparseprop
@pytest.mark.parametrize("module", [nn.Linear(40, 24), nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(16, 8, 3, stride=2)])
def test_sparseprop_layers_follow_the_mask_even_where_active_weights_are_zero(module):
    """sparseprop takes its pattern from the weight's non-zeros; the adapter takes it from the mask."""
    g = torch.Generator().manual_seed(0)
    mask = masked_(module, 0.8, g)
    with torch.no_grad():
        module.weight[mask.nonzero()[:7].unbind(1)] = 0.0  # grown weights start at zero
    shape = (3, 5, 40) if isinstance(module, nn.Linear) else (8, 16, 9, 9)  # batch 8: its batch loop's width
    x = torch.randn(shape, generator=g)
    dy = torch.randn(module(x).shape, generator=g)
    for variant in sparseprop_kernels.variants(module):
        layer = sparseprop_kernels.SparsepropLayer(module, mask, variant)
        assert sparseprop_kernels.agrees(layer, module, mask, x, dy), variant
        layer(x).backward(dy)
        assert ((module.weight.grad != 0) == mask).all()  # every active weight, zero or not, has a gradient
        module.zero_grad(set_to_none=True)
    model = nn.Sequential(module)
    choices = use_sparse_training_kernels(model, lambda: model(x), {"0.weight": mask}, force="sparseprop:batch")
    assert choices[0].plan == "sparseprop:batch" and isinstance(model[0], sparseprop_kernels.SparsepropLayer)
    assert list(model.state_dict()) == ["0.weight", "0.bias"]


@needs_sparseprop
def test_sparseprop_batch_kernels_are_kept_from_batches_they_get_wrong():
    """Its batch-vectorised Conv2d is wrong (and its backward writes out of bounds) for batches that are not a
    multiple of 8: that variant is not offered for them, and a layer given one computes densely, exactly."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    mask = masked_(conv, 0.8, g)
    assert sparseprop_kernels.variants(conv, 2) == ["outputs"]
    assert sparseprop_kernels.variants(conv, 16) == ["batch", "outputs"]
    x = torch.randn(2, 16, 8, 8, generator=g)
    dy = torch.randn(2, 24, 8, 8, generator=g)
    for variant in ("batch", "outputs"):
        layer = sparseprop_kernels.SparsepropLayer(conv, mask, variant)
        assert sparseprop_kernels.agrees(layer, conv, mask, x, dy), variant
