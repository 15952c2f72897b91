"""GraNet (Liu et al. 2021), starting sparse: S rises from S_i to S on Zhu & Gupta's cubic schedule, each update
prunes the surplus by magnitude and replaces p_t of the rest by gradient; the counts and the FLOPs follow."""

import pytest
import torch
from torch import nn

from sparsedm.sparse import SparseConfig, SparseEngine, train_flops_per_step
from sparsedm.sparse.cost import mean_forward_flops
from sparsedm.sparse.density_schedule import cubic


def test_cubic_schedule_by_hand():
    # S_t = S + (S_i - S) (1 - t / t_end)^3 with S = 0.9, S_i = 0.5, t_end = 100
    assert [cubic(0.9, 0.5, t, 100) for t in (0, 25, 50, 75, 100, 150)] == pytest.approx(
        [0.5, 0.9 - 0.4 * 0.75**3, 0.9 - 0.4 * 0.5**3, 0.9 - 0.4 * 0.25**3, 0.9, 0.9]
    )
    assert cubic(0.3, 0.5, 0, 100) == 0.3  # S_i is capped at S: never denser than asked, never sparser


def test_granet_counts_follow_the_schedule_and_drop_the_smallest_weights_by_hand():
    torch.manual_seed(0)
    model = nn.Linear(10, 10, bias=False)  # 100 weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = SparseConfig(
        method="granet",
        sparsity=0.9,
        initial_sparsity=0.5,
        distribution="uniform",
        prune_rate=0.1,
        prune_rate_decay="constant",
        update_interval=25,
        t_end=100,
    )
    engine = SparseEngine(model, optimizer, config, total_steps=120)
    assert engine.nonzeros == {"weight": 50}
    seen = {}
    for _ in range(120):
        optimizer.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        before = (model.weight.detach().abs().flatten().clone(), engine.masks["weight"].flatten().clone())
        stats = engine.after_optimizer_step()
        if stats is not None:
            seen[stats["step"]] = (stats, before, engine.last_update["weight"], engine.nonzeros["weight"])
    # active counts round((1 - S_t) · 100): 27 at t = 25 (S_t = 0.73125), 15, 11 (0.89375 -> 10.625), 10
    assert {t: count for t, (_, _, _, count) in seen.items()} == {25: 27, 50: 15, 75: 11, 100: 10}
    stats, (magnitude, mask), (dropped, grown), _ = seen[25]
    # at t = 25: the surplus 50 - 27 = 23 plus k = round(0.1 · 27) = 3 are dropped, 3 are grown
    assert (len(dropped), len(grown), stats["pruned"]) == (26, 3, 23)
    assert stats["target_sparsity"] == pytest.approx(0.73125)
    kept = mask.nonzero().flatten()
    kept = kept[~torch.isin(kept, dropped)]
    assert magnitude[dropped].max() <= magnitude[kept].min()  # the smallest |W| of the active ones went
    assert not mask[grown].any()  # grown among the inactive
    assert engine.sparsity() == pytest.approx(0.9)
    assert engine.counts_history == [(0, {"weight": 50}), (25, {"weight": 27}), (50, {"weight": 15}),
                                     (75, {"weight": 11}), (100, {"weight": 10})]  # fmt: skip


def test_granet_flops_follow_the_counts_it_trained_with():
    history = [(0, {"w": 50}), (25, {"w": 27}), (50, {"w": 15}), (75, {"w": 11}), (100, {"w": 10})]
    # one weight holding all 1000 dense FLOPs: f_S = 10 × count; steps 0-24 at 50, 25-49 at 27, ...
    assert mean_forward_flops(1000, {"w": 1000.0}, history, {"w": 100}, 100) == (500 + 270 + 150 + 110) * 25 / 100
    assert (
        mean_forward_flops(1000, {"w": 1000.0}, history, {"w": 100}, 200)
        == ((500 + 270 + 150 + 110) * 25 + 100 * 100) / 200
    )
    assert mean_forward_flops(1000, {"w": 1000.0}, history[:1], {"w": 100}, 100) == 500  # constant counts
    # RigL's rule on the averaged f_S: every ΔT steps a dense backward pass
    assert train_flops_per_step("granet", 2.0, 4.0, 10) == train_flops_per_step("rigl", 2.0, 4.0, 10)
