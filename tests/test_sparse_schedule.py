import math

import pytest
import torch
from tiny_models import TinyGRU, gru_loss

from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.schedule import UpdateSchedule


def test_cosine_prune_fraction_at_known_steps():
    s = UpdateSchedule(update_interval=100, end_step=750, prune_rate=0.3, decay="cosine")
    assert s.prune_fraction(0) == pytest.approx(0.3)
    assert s.prune_fraction(375) == pytest.approx(0.15)
    assert s.prune_fraction(750) == pytest.approx(0.0)
    assert s.prune_fraction(250) == pytest.approx(0.3 * (1 + math.cos(math.pi / 3)) / 2)
    assert UpdateSchedule(100, 750, 0.3, "constant").prune_fraction(700) == 0.3


def test_update_steps_stop_after_t_end():
    s = UpdateSchedule(update_interval=100, end_step=750, prune_rate=0.3)
    assert [t for t in range(1, 1001) if s.is_update_step(t)] == [100, 200, 300, 400, 500, 600, 700]
    assert s.next_update_step(701) == -1 and s.next_update_step(101) == 200 and s.next_update_step(200) == 200


def test_t_end_as_fraction_or_step():
    assert SparseConfig(t_end=0.75).end_step(1000) == 750
    assert SparseConfig(t_end=400).end_step(1000) == 400


def test_engine_makes_no_update_after_t_end():
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters())
    engine = SparseEngine(
        model,
        optimizer,
        SparseConfig(method="magran", update_interval=2, t_end=0.5, prune_rate=0.5, prune_rate_decay="constant"),
        total_steps=12,
    )
    gen = torch.Generator().manual_seed(0)
    changed = []
    for _ in range(12):
        optimizer.zero_grad()
        gru_loss(model, gen).backward()
        engine.after_backward()
        optimizer.step()
        before = {n: m.clone() for n, m in engine.masks.items()}
        engine.after_optimizer_step()
        changed.append(any(not torch.equal(before[n], engine.masks[n]) for n in before))
    assert [t for t, c in enumerate(changed, 1) if c] == [2, 4, 6]
