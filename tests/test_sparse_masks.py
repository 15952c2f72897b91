"""Per-step masking: NaN-safe gradient masking on its fast and exact paths, and masked weights that stay zero
between updates for every optimiser the engine accepts (the engine no longer re-zeroes them each step)."""

import logging

import pytest
import torch
from tiny_models import TinyGRU, gru_loss, sparse_step

from sparsedm.sparse import SparseConfig, SparseEngine, optim_state
from sparsedm.sparse.masks import all_finite, mask_gradients_

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-amsgrad-l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1),
    "adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1, foreach=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1, fused=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
}


def _masks_and_grads(seed=0, shapes=((40, 30), (7, 5, 3), (64,))):
    gen = torch.Generator().manual_seed(seed)
    params = {f"w{i}": torch.nn.Parameter(torch.randn(s, generator=gen)) for i, s in enumerate(shapes)}
    masks = {n: torch.rand(p.shape, generator=gen) < 0.4 for n, p in params.items()}
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen)
    return params, masks


def test_fast_gradient_masking_equals_masked_fill():
    params, masks = _masks_and_grads()
    expected = {n: p.grad.masked_fill(~masks[n], 0) for n, p in params.items()}
    mask_gradients_(params, masks)
    for n, p in params.items():
        assert torch.equal(p.grad, expected[n]), n


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_gradient_masking_zeroes_non_finite_masked_entries_and_keeps_active_ones(bad):
    params, masks = _masks_and_grads(seed=1)
    name = "w0"
    masked_pos = (~masks[name]).nonzero()[0].tolist()
    active_pos = masks[name].nonzero()[0].tolist()
    params[name].grad[tuple(masked_pos)] = bad
    params[name].grad[tuple(active_pos)] = bad
    finite_before = params["w1"].grad.clone()
    mask_gradients_(params, masks)
    grad = params[name].grad
    assert grad[tuple(masked_pos)] == 0  # a multiplication would leave NaN (or NaN from inf * 0) here
    assert not torch.isfinite(grad[tuple(active_pos)])  # an active overflow stays visible to the caller
    assert (grad[~masks[name]] == 0).all()
    assert torch.equal(params["w1"].grad, finite_before.masked_fill(~masks["w1"], 0))


def test_all_finite_is_exact_when_the_norm_overflows():
    huge = [torch.full((1000,), 3e38)]  # finite entries whose norm is inf in float32
    assert torch.isinf(torch._foreach_norm(huge)[0])
    assert all_finite(huge)
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("inf")])])
    assert all_finite([])


def test_huge_finite_gradients_are_masked_exactly():
    params, masks = _masks_and_grads(seed=2)
    params["w0"].grad.fill_(3e38)
    mask_gradients_(params, masks)
    assert (params["w0"].grad[~masks["w0"]] == 0).all() and (params["w0"].grad[masks["w0"]] == 3e38).all()


@pytest.mark.parametrize("method", ["static", "rigl"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_weights_stay_exactly_zero_at_every_step(name, method):
    torch.manual_seed(0)
    model = TinyGRU()
    optimizer = OPTIMIZERS[name](model.parameters())
    engine = SparseEngine(
        model, optimizer, SparseConfig(method=method, sparsity=0.7, update_interval=4, prune_rate=0.5), total_steps=40
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(13):
        sparse_step(model, gru_loss, engine, optimizer, gen)
        for n, p in engine.params.items():
            masked = ~engine.masks[n]
            assert (p[masked] == 0).all(), f"{name}: {n} non-zero at a masked position after step {step + 1}"
            for key, moment in optimizer.state[p].items():
                if torch.is_tensor(moment) and moment.shape == p.shape:
                    assert (moment[masked] == 0).all(), f"{name}: {key} of {n} after step {step + 1}"
        assert all(int((p != 0).sum()) <= engine.nonzeros[n] for n, p in engine.params.items())


def test_a_weight_changed_outside_the_optimizer_is_zeroed_at_the_next_update():
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    engine = SparseEngine(
        model, optimizer, SparseConfig(method="magran", sparsity=0.5, update_interval=2, prune_rate=0.2), total_steps=10
    )
    name, param = next(iter(engine.params.items()))
    with torch.no_grad():
        param[~engine.masks[name]] = 5.0  # e.g. a user edit between steps
    gen = torch.Generator().manual_seed(0)
    stats = [sparse_step(model, gru_loss, engine, optimizer, gen) for _ in range(2)][-1]
    assert stats is not None and stats["step"] == 2
    assert (param[~engine.masks[name]] == 0).all()
    assert int((param != 0).sum()) <= engine.nonzeros[name]


def test_per_tensor_adam_on_cpu_gets_a_one_time_hint(monkeypatch, caplog):
    monkeypatch.setattr(optim_state, "_warned", False)
    caplog.set_level(logging.WARNING, logger=optim_state.__name__)
    model = TinyGRU()
    SparseEngine(model, torch.optim.AdamW(model.parameters(), fused=True), SparseConfig(method="static"))
    hints = lambda: [r for r in caplog.records if "fused=True" in r.getMessage()]  # noqa: E731
    assert hints() == []
    model = TinyGRU()
    SparseEngine(model, torch.optim.AdamW(model.parameters()), SparseConfig(method="static"))
    assert len(hints()) == 1
    model = TinyGRU()
    SparseEngine(model, torch.optim.Adam(model.parameters()), SparseConfig(method="static"))
    assert len(hints()) == 1  # once per process


def _static_engine(seed):
    torch.manual_seed(0)
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    return SparseEngine(model, optimizer, SparseConfig(method="static", sparsity=0.6, seed=seed)), model, optimizer


def test_load_masks_takes_another_topology_and_zeroes_what_it_masks():
    source, _, _ = _static_engine(seed=1)
    engine, model, optimizer = _static_engine(seed=2)
    sparse_step(model, gru_loss, engine, optimizer, torch.Generator().manual_seed(0))  # moments under the old topology
    assert any(not torch.equal(source.masks[n], engine.masks[n]) for n in engine.masks)
    engine.load_masks({n: m.to(torch.uint8) for n, m in source.masks.items()})  # any 0/1 dtype is accepted
    for name, param in engine.params.items():
        mask = engine.masks[name]
        assert mask.dtype == torch.bool and torch.equal(mask, source.masks[name])
        assert (param[~mask] == 0).all()
        assert (optimizer.state[param]["exp_avg"][~mask] == 0).all() and (
            optimizer.state[param]["exp_avg_sq"][~mask] == 0
        ).all()


def test_load_masks_refuses_masks_of_another_model_or_density():
    from sparsedm.errors import UserError

    engine, _, _ = _static_engine(seed=0)
    name = next(n for n, m in engine.masks.items() if not m.all())  # ERK may make small tensors dense
    masks = {n: m.clone() for n, m in engine.masks.items()}
    with pytest.raises(UserError, match=r"missing: \['" + name.replace(".", r"\.")):
        engine.load_masks({n: m for n, m in masks.items() if n != name})
    with pytest.raises(UserError, match=r"unexpected: \['extra\.weight'\]"):
        engine.load_masks({**masks, "extra.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(UserError, match=f"for {name} have shape"):
        engine.load_masks({**masks, name: masks[name].view(-1)})
    denser = masks[name].clone().view(-1)
    denser[(~denser).nonzero()[0]] = True
    with pytest.raises(
        UserError, match=f"for {name} have {engine.nonzeros[name] + 1} non-zeros, not {engine.nonzeros[name]}"
    ):
        engine.load_masks({**masks, name: denser.view_as(masks[name])})
    assert all(torch.equal(engine.masks[n], masks[n]) for n in masks)  # a refused load changes nothing
