import pytest
import torch
from tiny_models import TinyGRU, gru_loss, tiny_unet, unet_loss

from sparsedm.errors import UserError
from sparsedm.sparse import EMA, SparseConfig, SparseEngine

MODELS = {"unet": (tiny_unet, unet_loss), "gru": (TinyGRU, gru_loss)}


def train(model, loss_fn, engine, optimizer, ema, steps, generator, on_step=None):
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model, generator).backward()
        engine.after_backward()
        if on_step:
            on_step("after_backward")
        before = {n: m.clone() for n, m in engine.masks.items()}
        optimizer.step()
        stats = engine.after_optimizer_step()
        if ema is not None:
            ema.update(model)
        if on_step:
            on_step("after_step", before=before, stats=stats)


@pytest.mark.parametrize("model_name", ["unet", "gru"])
@pytest.mark.parametrize("method", ["rigl", "magran"])
@pytest.mark.parametrize("regrow_dropped", [False, True])
def test_invariants_hold_after_many_updates(model_name, method, regrow_dropped):
    build, loss_fn = MODELS[model_name]
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    ema = EMA(model, decay=0.9)
    engine = SparseEngine(
        model,
        optimizer,
        SparseConfig(
            method=method, sparsity=0.7, prune_rate=0.5, update_interval=3, t_end=1.0, regrow_dropped=regrow_dropped
        ),
        total_steps=30,
        ema=ema,
    )
    ema_params = dict(ema.named_parameters())
    updates = []

    def check(when, before=None, stats=None):
        for name, param in engine.params.items():
            mask = engine.masks[name]
            assert int(mask.sum()) == engine.nonzeros[name], name
            if when == "after_backward":
                assert (param.grad[~mask] == 0).all(), name
                continue
            assert (param[~mask] == 0).all(), name
            state = optimizer.state[param]
            assert (state["exp_avg"][~mask] == 0).all() and (state["exp_avg_sq"][~mask] == 0).all(), name
            assert (ema_params[name][~mask] == 0).all(), name
        if stats:
            updates.append(len(engine.last_update))
            for name, (dropped, grown) in engine.last_update.items():
                prev = before[name].view(-1)
                assert len(set(dropped.tolist()) & set(grown.tolist())) == 0
                assert prev[dropped].all() and not prev[grown].any()  # drop active, grow previously inactive
                assert stats["replaced"] + stats["regrown"] <= stats["requested"]
                assert len(set(grown.tolist())) == len(grown)
                assert (engine.params[name].view(-1)[grown] == 0).all()  # grown weights start at zero

    train(model, loss_fn, engine, optimizer, ema, 30, torch.Generator().manual_seed(1), on_step=check)
    assert len(updates) == 10
    assert sum(n > 0 for n in updates) >= 8  # cosine decay reaches p_t = 0 only at the end


def test_static_mask_never_changes_and_dense_is_untouched():
    model = TinyGRU()
    optimizer = torch.optim.Adam(model.parameters())
    engine = SparseEngine(
        model, optimizer, SparseConfig(method="static", sparsity=0.8, update_interval=1), total_steps=10
    )
    masks = {n: m.clone() for n, m in engine.masks.items()}
    train(model, gru_loss, engine, optimizer, None, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(masks[n], engine.masks[n]) for n in masks)
    assert abs(engine.sparsity() - 0.8) < 0.01

    dense = TinyGRU()
    before = {n: p.clone() for n, p in dense.named_parameters()}
    dense_engine = SparseEngine(dense, torch.optim.Adam(dense.parameters()), SparseConfig(method="dense"))
    assert dense_engine.masks == {} and dense_engine.sparsity() == 0.0
    assert all(torch.equal(before[n], p) for n, p in dense.named_parameters())


def test_gradient_masking_is_nan_safe():
    model = TinyGRU()
    engine = SparseEngine(model, torch.optim.AdamW(model.parameters()), SparseConfig(method="static", sparsity=0.5))
    for name, param in engine.params.items():
        param.grad = torch.full_like(param, float("nan"))
    engine.after_backward()
    for name, param in engine.params.items():
        assert (param.grad[~engine.masks[name]] == 0).all()  # grad * mask would leave NaN here


def test_non_finite_gradient_skips_the_update():
    model = TinyGRU()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = SparseEngine(
        model, optimizer, SparseConfig(method="rigl", sparsity=0.5, update_interval=2, prune_rate=0.5), total_steps=100
    )
    gen = torch.Generator().manual_seed(0)
    train(model, gru_loss, engine, optimizer, None, 1, gen)
    masks = {n: m.clone() for n, m in engine.masks.items()}
    optimizer.zero_grad()
    gru_loss(model, gen).backward()
    model.proj_out.bias.grad[0] = float("inf")  # a dense parameter's overflow also skips the update
    engine.after_backward()
    stats = engine.after_optimizer_step()
    assert stats == {"step": 2, "skipped": True}
    assert all(torch.equal(masks[n], engine.masks[n]) for n in masks)
    # and the next update happens normally
    train(model, gru_loss, engine, optimizer, None, 2, gen)
    assert any(not torch.equal(masks[n], engine.masks[n]) for n in masks)


def test_sgd_momentum_is_zeroed_at_dropped_and_grown_positions():
    model = TinyGRU()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = SparseEngine(
        model,
        optimizer,
        SparseConfig(method="magran", sparsity=0.5, update_interval=4, prune_rate=0.3),
        total_steps=100,
    )
    train(model, gru_loss, engine, optimizer, None, 4, torch.Generator().manual_seed(0))
    assert engine.last_update
    for name, (dropped, grown) in engine.last_update.items():
        buf = optimizer.state[engine.params[name]]["momentum_buffer"].view(-1)
        assert (buf[dropped] == 0).all() and (buf[grown] == 0).all()
        assert (buf[~engine.masks[name].view(-1)] == 0).all()


def test_rigl_keeps_dense_gradient_only_in_the_window_before_an_update():
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters())
    engine = SparseEngine(
        model,
        optimizer,
        SparseConfig(method="rigl", sparsity=0.5, update_interval=5, grad_accumulation=2),
        total_steps=100,
    )
    gen = torch.Generator().manual_seed(0)
    held = []
    for step in range(1, 11):
        optimizer.zero_grad()
        gru_loss(model, gen).backward()
        grads = {n: p.grad.clone() for n, p in engine.params.items()}
        engine.after_backward()
        held.append(bool(engine._dense_grads))
        if step == 4:
            first = grads
        if step == 5:  # the accumulated dense gradient is the sum over steps 4 and 5, unmasked
            for n in grads:
                torch.testing.assert_close(engine._dense_grads[n], first[n] + grads[n])
        optimizer.step()
        engine.after_optimizer_step()
    assert held == [False, False, False, True, True, False, False, False, True, True]
    assert engine._dense_grads == {}


def test_unsupported_optimizer_is_refused():
    model = TinyGRU()
    with pytest.raises(UserError, match="RMSprop is not supported"):
        SparseEngine(model, torch.optim.RMSprop(model.parameters()), SparseConfig(method="rigl"), total_steps=10)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sparsity": 1.0}, "S must be in"),
        ({"sparsity": -0.1}, "S must be in"),
        ({"prune_rate": 0.0}, "p must be in"),
        ({"prune_rate": 1.5}, "p must be in"),
        ({"update_interval": 0}, "ΔT must be >= 1"),
        ({"method": "lottery"}, "method='lottery' is unknown"),
        ({"distribution": "random"}, "distribution='random' is unknown"),
        ({"include": ["no_such_layer"]}, "matches no parameter"),
        ({"exclude": ["nothing_here"]}, "matches no parameter"),
    ],
)
def test_bad_config_gives_clear_error(overrides, message):
    model = TinyGRU()
    with pytest.raises(UserError, match=message):
        SparseEngine(model, torch.optim.AdamW(model.parameters()), SparseConfig(**overrides), total_steps=10)


def test_selection_follows_the_default_rule():
    gru = TinyGRU()
    gru_engine = SparseEngine(gru, torch.optim.AdamW(gru.parameters()), SparseConfig(method="static"))
    names = set(gru_engine.params)
    assert {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l1_reverse", "proj_in.weight"} <= names
    assert not any("bias" in n or "time_embedding" in n for n in names)

    unet = tiny_unet()
    unet_names = set(SparseEngine(unet, torch.optim.AdamW(unet.parameters()), SparseConfig(method="static")).params)
    assert (
        "down_blocks.1.attentions.0.to_q.weight" in unet_names
        and "mid_block.attentions.0.to_out.0.weight" in unet_names
    )
    assert not any(n.startswith("time_embedding.") or "norm" in n for n in unet_names)

    only_gru = SparseEngine(
        gru,
        torch.optim.AdamW(gru.parameters()),
        SparseConfig(method="static", include=[r"^gru\."], exclude=["reverse"]),
    )
    assert set(only_gru.params) == {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l1", "gru.weight_hh_l1"}


def test_report_lists_every_sparse_tensor():
    model = TinyGRU()
    engine = SparseEngine(
        model,
        torch.optim.AdamW(model.parameters()),
        SparseConfig(method="static", sparsity=0.5, distribution="uniform"),
    )
    rows = engine.report()
    assert [r.name for r in rows] == list(engine.params)
    for row in rows:
        assert row.nonzero == engine.nonzeros[row.name] and row.numel == engine.params[row.name].numel()
        assert abs(row.density - 0.5) <= 1 / row.numel


def test_conv1d_lstm_and_linear_weights_are_sparsified():
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 8, 3)
            self.lstm = torch.nn.LSTM(8, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 2)

    model = Mixed()
    engine = SparseEngine(
        model, torch.optim.Adam(model.parameters()), SparseConfig(method="static", sparsity=0.5, distribution="uniform")
    )
    assert set(engine.params) == {"conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"}
    for name, param in engine.params.items():
        assert int((param != 0).sum()) <= engine.nonzeros[name] == round(0.5 * param.numel())
