"""MEST-DM (a record plus one part, drop.py's magnitude_and_gradient): its drop score against a hand computation,
and its update in masked and compact storage against the same computation on the engine's own tensors."""

import pytest
import torch
from torch import nn

from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.drop import MEST_LAMBDA, drop_lowest, magnitude, magnitude_and_gradient
from sparsedm.sparse.methods import METHODS
from sparsedm.sparse.tensor_state import Read, TensorState


def test_the_drop_score_is_weight_plus_lambda_gradient_by_hand():
    w = torch.tensor([0.50, -0.10, 0.30, 0.20, 0.0])
    g = torch.tensor([0.00, 0.50, 0.05, -0.01, 9.0])
    mask = torch.tensor([True, True, True, True, False])
    state = TensorState("w", mask, torch.Generator(), weight=w, grad=g)
    assert MEST_LAMBDA == 1.0
    # |w| + |g| = 0.50, 0.60, 0.35, 0.21 (and 9.0 where inactive): the two lowest active are 3 and 2
    torch.testing.assert_close(magnitude_and_gradient(state), torch.tensor([0.50, 0.60, 0.35, 0.21, 9.0]))
    assert sorted(drop_lowest(magnitude_and_gradient(state), mask, 2).tolist()) == [2, 3]
    assert sorted(drop_lowest(magnitude(state), mask, 2).tolist()) == [1, 3]  # magnitude alone: another set
    assert METHODS["mest"].reads == {Read.WEIGHT, Read.GRAD}


def one_update(kernels: str):
    """A Linear trained to its first update (ΔT = 2); returns (what the drop read, the engine's dropped indices)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    config = SparseConfig(method="mest", sparsity=0.6, update_interval=2, prune_rate=0.5, t_end=1.0)
    engine = SparseEngine(model, optimizer, config, total_steps=8)
    plan = SparseConfig(kernels=kernels).kernel_plan
    if plan.compact:
        engine.compact(plan)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(16, 12, generator=g)
        (100 * (model(x) - x[:, :10].flip(1)).pow(2).mean()).backward()  # a large gradient: it decides drops
        engine.after_backward()
        optimizer.step()
        layer = model[0]
        weight = layer.weight.detach().clone()
        grad = layer.pattern.scatter(layer.values.grad) if hasattr(layer, "values") else layer.weight.grad
        seen = (weight, grad.detach().clone().view_as(weight), engine.masks["0.weight"].clone())
        stats = engine.after_optimizer_step()
    return seen, engine.last_update["0.weight"][0], stats


@pytest.mark.parametrize("kernels", ["masked", "compact", "torch/torch/sampled"])
def test_an_update_drops_the_lowest_weight_plus_gradient_in_either_storage(kernels):
    (weight, grad, mask), dropped, stats = one_update(kernels)
    k = len(dropped)
    assert k == round(stats["prune_fraction"] * int(mask.sum())) > 0
    score = (weight.abs() + MEST_LAMBDA * (grad * mask).abs()).flatten().masked_fill(~mask.flatten(), float("inf"))
    expected = torch.sort(score).indices[:k]  # by hand: the k active positions of lowest |W| + λ|g|
    assert sorted(dropped.tolist()) == sorted(expected.tolist())
    by_magnitude = torch.sort(weight.abs().flatten().masked_fill(~mask.flatten(), float("inf"))).indices[:k]
    assert set(by_magnitude.tolist()) != set(expected.tolist())  # the gradient changed the choice


def test_masked_and_compact_mest_drop_the_same_weights():
    assert one_update("masked")[1].sort().values.equal(one_update("torch/torch/sampled")[1].sort().values)
