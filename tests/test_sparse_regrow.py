"""The grow step's candidate set (`sparse.regrow_dropped`) and the capped prune rate in the update statistics.

Default: grow among the positions inactive *before* the update, so exactly k connections change. google-research/
rigl (`_get_update_op` in rigl/sparse_optimizers_base.py) grows among those inactive *after* the drop: a
just-dropped weight may be grown again, keeps its value and optimiser moments (reinit_when_same=False), and
fewer than k connections change.
"""

import pytest
import torch
from torch import nn

from sparsedm.sparse import SparseConfig, SparseEngine

N = 8  # an N x N weight, half of it active


def one_update(regrow_dropped: bool, favoured: int):
    """A RigL update at step 1 whose dense gradient is largest at the `favoured` smallest active weights.

    Returns the engine, the weight and Adam moments before the update, and the update's statistics.
    """
    model = nn.Sequential(nn.Linear(N, N, bias=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    config = SparseConfig(
        method="rigl",
        sparsity=0.5,
        distribution="uniform",
        prune_rate=0.5,
        prune_rate_decay="constant",
        update_interval=1,
        t_end=10,
        regrow_dropped=regrow_dropped,
    )
    engine = SparseEngine(model, optimizer, config)
    weight, mask = model[0].weight, engine.masks["0.weight"]
    signs = torch.where(torch.arange(N * N) % 3 == 0, -1.0, 1.0).view(N, N)
    with torch.no_grad():
        weight.copy_(torch.arange(1, N * N + 1, dtype=torch.float32).view(N, N) * 0.1 * signs)
    engine.apply_masks()
    active = mask.view(-1).nonzero().squeeze(1)
    by_size = active[weight.detach().abs().view(-1)[active].argsort()]  # active positions, smallest |W| first
    grad = torch.ones(N * N)  # every inactive position: |g| = 1
    grad[by_size[:favoured]] = 100.0  # the smallest active weights (the ones dropped) have the largest gradients
    weight.grad = grad.view(N, N).clone()
    engine.after_backward()
    optimizer.step()
    before = {
        "weight": weight.detach().clone(),
        "mask": mask.clone(),
        "exp_avg": optimizer.state[weight]["exp_avg"].clone(),
        "exp_avg_sq": optimizer.state[weight]["exp_avg_sq"].clone(),
    }
    stats = engine.after_optimizer_step()
    return engine, optimizer, before, stats, by_size


def check_invariants(engine, optimizer, before):
    name, weight = "0.weight", engine.params["0.weight"]
    mask = engine.masks[name]
    assert int(mask.sum()) == engine.nonzeros[name] == N * N // 2
    dropped, grown = engine.last_update.get(name, (torch.empty(0, dtype=torch.long),) * 2)
    assert len(dropped) == len(grown) and not set(dropped.tolist()) & set(grown.tolist())
    prev = before["mask"].view(-1)
    assert prev[dropped].all() and not prev[grown].any()  # the connections that changed
    state = optimizer.state[weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert (state[key][~mask] == 0).all() and (state[key].view(-1)[grown] == 0).all()
    assert (weight[~mask] == 0).all() and (weight.view(-1)[grown] == 0).all()


def test_reference_rule_regrows_just_dropped_weights_with_their_value_and_moments():
    engine, optimizer, before, stats, by_size = one_update(regrow_dropped=True, favoured=16)
    # k = 16 dropped; the 16 largest gradients among the inactive-after-drop positions are exactly those
    assert stats["requested"] == 16 and stats["regrown"] == 16 and stats["replaced"] == 0
    assert torch.equal(engine.masks["0.weight"], before["mask"])
    weight = engine.params["0.weight"]
    assert torch.equal(weight.detach(), before["weight"])  # regrown weights keep their values ...
    state = optimizer.state[weight]
    assert torch.equal(state["exp_avg"], before["exp_avg"]) and torch.equal(state["exp_avg_sq"], before["exp_avg_sq"])
    assert (before["exp_avg"].view(-1)[by_size[:16]] != 0).all()  # ... and their (non-zero) moments
    check_invariants(engine, optimizer, before)


def test_reference_rule_changes_fewer_than_k_connections_when_some_are_regrown():
    engine, optimizer, before, stats, by_size = one_update(regrow_dropped=True, favoured=6)
    assert stats["requested"] == 16 and stats["regrown"] == 6 and stats["replaced"] == 10
    dropped, grown = engine.last_update["0.weight"]
    assert len(dropped) == 10 and set(dropped.tolist()) == set(by_size[6:16].tolist())
    kept = by_size[:6]
    assert torch.equal(engine.params["0.weight"].view(-1)[kept], before["weight"].view(-1)[kept])
    check_invariants(engine, optimizer, before)


def test_default_rule_grows_only_previously_inactive_positions():
    engine, optimizer, before, stats, by_size = one_update(regrow_dropped=False, favoured=16)
    assert stats["requested"] == stats["replaced"] == 16 and stats["regrown"] == 0
    dropped, grown = engine.last_update["0.weight"]
    assert set(dropped.tolist()) == set(by_size[:16].tolist()) and len(grown) == 16
    check_invariants(engine, optimizer, before)


@pytest.mark.parametrize("regrow_dropped", [False, True])
def test_capped_prune_rate_is_reported(regrow_dropped):
    """At density 0.9 a 10 x 10 weight has 10 inactive positions: p = 0.5 asks for 45 replacements."""
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    optimizer = torch.optim.AdamW(model.parameters())
    config = SparseConfig(
        method="magran",
        sparsity=0.5,
        distribution="custom",
        custom_densities={r"^0\.": 0.9, r"^1\.": 0.5},
        prune_rate=0.5,
        prune_rate_decay="constant",
        update_interval=1,
        t_end=10,
        regrow_dropped=regrow_dropped,
    )
    engine = SparseEngine(model, optimizer, config)
    model(torch.randn(3, 10)).square().mean().backward()
    engine.after_backward()
    optimizer.step()
    stats = engine.after_optimizer_step()
    assert stats["requested"] == 45 + 25
    if regrow_dropped:  # candidates are the 10 inactive plus the 45 just dropped: no cap
        assert stats["capped"] == {} and stats["replaced"] + stats["regrown"] == 70
    else:
        assert stats["capped"] == {"0.weight": [45, 10]} and stats["replaced"] == 10 + 25
    assert all(int(engine.masks[n].sum()) == engine.nonzeros[n] for n in engine.masks)
