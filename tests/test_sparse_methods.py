"""sparse/methods.py is the one home of the methods: a record added there is accepted by the config, the
sweep grid, the engine, the cost accounting and the report, with nothing else to edit."""

import pytest
import torch
from tiny_models import TinyGRU

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import aggregate, markdown_table
from sparsedm.experiments.grid import SweepGrid
from sparsedm.sparse import SparseConfig, SparseEngine, train_flops_per_step
from sparsedm.sparse.methods import METHODS, Method, get_method


@pytest.fixture
def snfs(monkeypatch):
    """A made-up dynamic method with its own alias, grow rule and FLOPs formula; records its grow calls."""
    calls = []

    def grow(mask, k, dense_grad, generator):
        calls.append(dense_grad is not None)
        return (~mask.flatten()).nonzero().squeeze(1)[:k]

    method = Method(
        "snfs",
        "SNFS-DM",
        sparse=True,
        dynamic=True,
        train_flops=lambda f_sparse, f_dense, interval: 7.0 * f_sparse + interval,
        grow=grow,
        needs_dense_gradient=True,
        aliases=("sparse-momentum",),
    )
    monkeypatch.setitem(METHODS, "snfs", method)
    return calls


def test_a_new_record_is_accepted_by_config_grid_cost_engine_and_report(snfs):
    config = SparseConfig(method="sparse-momentum", sparsity=0.5, update_interval=2, prune_rate=0.5, t_end=1.0)
    assert (config.canonical_method, config.is_dynamic) == ("snfs", True)

    grid = SweepGrid(methods=["rigl", "sparse-momentum"], sparsities=[0.5], prune_rates=[0.1, 0.5], seeds=1)
    assert [spec.name for spec in grid.runs()] == [
        "rigl-S0.5-p0.1-seed0",
        "rigl-S0.5-p0.5-seed0",
        "snfs-S0.5-p0.1-seed0",
        "snfs-S0.5-p0.5-seed0",
    ]
    assert train_flops_per_step("snfs", 2.0, 10.0, 5) == 19.0

    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters())
    engine = SparseEngine(model, optimizer, config, total_steps=4)
    for _ in range(2):
        model(torch.randn(2, 5, 3), torch.zeros(2)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        engine.after_optimizer_step()
    assert snfs and all(snfs)  # its grow rule ran, with the dense gradient it asked for

    record = {
        "method": "snfs",
        "sparsity": 0.5,
        "prune_rate": 0.1,
        "fid": 3.0,
        "params_nonzero": 5,
        "params_total": 10,
        "flops_forward_sparse": 1.0,
        "flops_forward_dense": 2.0,
        "flops_train_total": 3.0,
        "flops_train_step": 1.0,
        "flops_train_step_dense": 2.0,
    }
    rows = aggregate([record, {**record, "method": "rigl"}])
    assert [r.method for r in rows] == ["rigl", "snfs"]  # in the registry's order
    assert "| SNFS-DM | 0.5 | 0.1 |" in markdown_table(rows)


def test_unknown_methods_are_refused_everywhere_with_the_registry_list():
    with pytest.raises(UserError, match=r"sparse.method='snfs' is unknown; use one of dense, static, rigl, magran"):
        SparseConfig(method="snfs")
    with pytest.raises(UserError, match="--methods snfs: use some of dense, static, rigl, magran"):
        SweepGrid(methods=["snfs"]).validate()
    with pytest.raises(UserError, match="snfs"):
        train_flops_per_step("snfs", 1.0, 2.0, 10)


def test_the_papers_methods_as_recorded():
    assert [(m.name, m.display_name, m.sparse, m.dynamic) for m in METHODS.values()] == [
        ("dense", "Dense", False, False),
        ("static", "Static-DM", True, False),
        ("rigl", "RigL-DM", True, True),
        ("magran", "MagRan-DM", True, True),
    ]
    assert get_method("set") is METHODS["magran"]
    assert [m.name for m in METHODS.values() if m.needs_dense_gradient] == ["rigl"]
