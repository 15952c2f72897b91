"""sparse/methods.py is the one home of the methods: a record added there is accepted by the config, the
sweep grid, the engine, the cost accounting and the report, with nothing else to edit."""

import pytest
import torch
from tiny_models import TinyGRU

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import aggregate, markdown_table
from sparsedm.experiments.baselines import SMALL_DENSE
from sparsedm.experiments.grid import SweepGrid
from sparsedm.sparse import SparseConfig, SparseEngine, train_flops_per_step
from sparsedm.sparse.methods import METHODS, Method, get_method
from sparsedm.sparse.tensor_state import Read, reads


@pytest.fixture
def toy(monkeypatch):
    """A made-up dynamic method with its own alias, grow rule and FLOPs formula; records its grow calls."""
    calls = []

    @reads(Read.DENSE_GRAD)
    def grow(candidates, k, state):
        calls.append(state.dense_grad is not None and state.grad is None)  # what its method reads, only that
        return (~candidates.flatten()).nonzero().squeeze(1)[:k]

    method = Method(
        "toy",
        "Toy-DM",
        sparse=True,
        dynamic=True,
        train_flops=lambda f_sparse, f_dense, interval: 7.0 * f_sparse + interval,
        grow=grow,
        aliases=("toy-alias",),
    )
    monkeypatch.setitem(METHODS, "toy", method)
    return calls


def test_a_new_record_is_accepted_by_config_grid_cost_engine_and_report(toy):
    config = SparseConfig(method="toy-alias", sparsity=0.5, update_interval=2, prune_rate=0.5, t_end=1.0)
    assert (config.canonical_method, config.is_dynamic) == ("toy", True)

    grid = SweepGrid(methods=["rigl", "toy-alias"], sparsities=[0.5], prune_rates=[0.1, 0.5], seeds=1)
    assert [spec.name for spec in grid.runs()] == [
        "rigl-S0.5-p0.1-seed0",
        "rigl-S0.5-p0.5-seed0",
        "toy-S0.5-p0.1-seed0",
        "toy-S0.5-p0.5-seed0",
    ]
    assert train_flops_per_step("toy", 2.0, 10.0, 5) == 19.0

    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters())
    engine = SparseEngine(model, optimizer, config, total_steps=4)
    for _ in range(2):
        model(torch.randn(2, 5, 3), torch.zeros(2)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        engine.after_optimizer_step()
    assert toy and all(toy)  # its grow rule ran, with the dense gradient it asked for

    record = {
        "method": "toy",
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
    assert [r.method for r in rows] == ["rigl", "toy"]  # in the registry's order
    assert "| Toy-DM | 0.5 | 0.1 |" in markdown_table(rows)


def test_unknown_methods_are_refused_everywhere_with_the_registry_list():
    listed = ", ".join(METHODS)
    with pytest.raises(UserError, match=rf"sparse.method='toy' is unknown; use one of {listed} \("):
        SparseConfig(method="toy")
    with pytest.raises(UserError, match=f"--methods toy: use some of {listed}, {SMALL_DENSE.name}$"):
        SweepGrid(methods=["toy"]).validate()
    with pytest.raises(UserError, match="toy"):
        train_flops_per_step("toy", 1.0, 2.0, 10)


def test_the_papers_methods_as_recorded():
    assert [(m.name, m.display_name, m.sparse, m.dynamic) for m in METHODS.values()][:4] == [
        ("dense", "Dense", False, False),
        ("static", "Static-DM", True, False),
        ("rigl", "RigL-DM", True, True),
        ("magran", "MagRan-DM", True, True),
    ]
    assert get_method("set") is METHODS["magran"]
    assert METHODS["rigl"].needs_dense_gradient and not METHODS["magran"].needs_dense_gradient
    assert METHODS["snfs"].dense_moments and not METHODS["rigl"].dense_moments
    assert METHODS["mest"].reads == {Read.WEIGHT, Read.GRAD}


def test_no_method_name_is_spelled_outside_the_records():
    """Help texts, the grid, the tables and the plots take names from METHODS: a string literal equal to a
    method's name, alias or display name anywhere else would not follow a new or renamed record."""
    import ast
    from pathlib import Path

    package = Path(__file__).parents[1] / "sparsedm"
    spellings = {s for m in METHODS.values() for s in (m.name, m.display_name, *m.aliases)}
    found = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package).as_posix()
        if where == "sparse/methods.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in spellings:
                found.append(f"{where}:{node.lineno} {node.value!r}")
    assert not found


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_resumes_from_its_state(method):
    """A state written by any method (Dense included: no tensors) loads into a fresh engine with the same counts."""

    def engine():
        model = TinyGRU()
        optimizer = torch.optim.AdamW(model.parameters())
        config = SparseConfig(method=method, sparsity=0.8, update_interval=2, t_end=1.0, initial_sparsity=0.5)
        return model, optimizer, SparseEngine(model, optimizer, config, total_steps=6)

    model, optimizer, first = engine()
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.randn(2, 5, 3), torch.zeros(2)).pow(2).mean().backward()
        first.after_backward()
        optimizer.step()
        first.after_optimizer_step()
    _, _, again = engine()
    again.load_state_dict(first.state_dict())
    assert again.nonzeros == first.nonzeros and again.counts_history == first.counts_history
    assert again.masks_fingerprint() == first.masks_fingerprint()
