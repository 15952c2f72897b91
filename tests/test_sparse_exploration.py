"""The exploration rate R (in-time over-parameterisation): the share of weights ever active, per tensor."""

import logging

import pytest
import torch
from tiny_models import TinyGRU, gru_loss, sparse_step

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine, format_report
from sparsedm.sparse.exploration import ExploredPositions


def engine_for(method, model=None, **options):
    model = model or TinyGRU()
    config = SparseConfig(method=method, sparsity=0.7, prune_rate=0.5, update_interval=2, t_end=1.0, **options)
    return SparseEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-2), config, total_steps=20)


@pytest.mark.parametrize("method", ["rigl", "magran"])
def test_dynamic_rates_are_the_union_of_all_masks_grow_with_updates_and_stay_within_one(method):
    engine = engine_for(method)
    union = {n: m.clone() for n, m in engine.masks.items()}
    density = 1 - engine.sparsity()
    assert engine.exploration_rate() == pytest.approx(density)
    generator, rates = torch.Generator().manual_seed(0), []
    for _ in range(20):
        stats = sparse_step(engine.model, gru_loss, engine, engine.optimizer, generator)
        for name, mask in engine.masks.items():
            union[name] |= mask
        if stats is not None:
            rates.append(stats["exploration_rate"])
            expected = sum(int(u.sum()) for u in union.values()) / sum(u.numel() for u in union.values())
            assert stats["exploration_rate"] == expected  # exactly the weights active at some point
    per_tensor = {row.name: row.exploration_rate for row in engine.report()}
    assert per_tensor == {n: int(u.sum()) / u.numel() for n, u in union.items()}
    assert len(rates) == 10 and rates == sorted(rates) and rates[-1] > rates[0] > density
    assert all(r <= 1.0 for r in rates) and all(0 < r <= 1.0 for r in per_tensor.values())
    assert "explored" in format_report(engine.report()).splitlines()[0]


def test_static_rate_is_its_density_and_dense_is_one():
    engine = engine_for("static")
    for _ in range(6):
        assert sparse_step(engine.model, gru_loss, engine, engine.optimizer, torch.Generator().manual_seed(0)) is None
    for row in engine.report():
        assert row.exploration_rate == row.density
    assert engine.exploration_rate() == pytest.approx(1 - engine.sparsity())
    assert engine_for("dense").exploration_rate() == 1.0


def test_a_checkpoint_without_a_record_loads_and_counts_from_its_masks(caplog):
    engine = engine_for("rigl")
    for _ in range(6):
        sparse_step(engine.model, gru_loss, engine, engine.optimizer, torch.Generator().manual_seed(0))
    state = engine.state_dict()
    assert engine.exploration_rate() > 1 - engine.sparsity()
    older = {k: v for k, v in state.items() if k != "explored"}
    fresh = engine_for("rigl")
    with caplog.at_level(logging.WARNING, logger="sparsedm.sparse.exploration"):
        fresh.load_state_dict(older)
    assert any("no exploration record" in r.getMessage() for r in caplog.records)
    assert fresh.exploration_rate() == pytest.approx(1 - fresh.sparsity())
    fresh.load_state_dict(state)
    assert fresh.exploration_rate() == engine.exploration_rate()
    name = next(iter(state["explored"]))
    with pytest.raises(UserError, match="exploration record for"):
        fresh.load_state_dict(
            {**state, "explored": {**state["explored"], name: torch.zeros_like(state["masks"][name])}}
        )


def test_load_masks_starts_the_record_from_the_loaded_topology():
    explored = engine_for("magran")
    for _ in range(6):
        sparse_step(explored.model, gru_loss, explored, explored.optimizer, torch.Generator().manual_seed(0))
    target = engine_for("magran")
    target.load_masks(explored.masks)
    assert target.exploration_rate() == pytest.approx(1 - target.sparsity())
    assert target.exploration_rate() < explored.exploration_rate()
    for name, seen in target.explored.ever_active.items():
        assert torch.equal(seen, explored.masks[name])


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_the_record_packs_eight_weights_to_a_byte_and_unpacks_them_exactly(numel):
    from sparsedm.sparse.exploration import pack_bits, unpack_bits

    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    bits = pack_bits(mask.view(1, -1))
    assert bits.dtype == torch.uint8 and bits.numel() == -(-numel // 8)
    assert torch.equal(unpack_bits(bits, (1, numel)), mask.view(1, -1))
    record = ExploredPositions({"w": mask.view(1, -1)})
    grown = (~mask).nonzero().squeeze(1)[:2]
    record.add("w", grown)
    expected = mask.clone()
    expected[grown] = True
    assert torch.equal(record.ever_active["w"].view(-1), expected)
    assert record.rate() == pytest.approx(int(expected.sum()) / numel)
