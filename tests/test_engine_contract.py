"""The engine's contract with a library user's loop: its two calls in order, once per optimiser step, and the
optimisers it can keep sparse; a mistake stops with one UserError line."""

import pytest
import torch
from tiny_models import TinyGRU, gru_loss, sparse_step

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine


def build(method="rigl", optimizer=None):
    model = TinyGRU()
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, SparseEngine(model, optimizer, SparseConfig(method=method, update_interval=2), 10)


@pytest.mark.parametrize("method", ["rigl", "dense"])
def test_after_optimizer_step_twice_is_refused(method):
    model, optimizer, engine = build(method)
    sparse_step(model, gru_loss, engine, optimizer, torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="after_optimizer_step was called without after_backward"):
        engine.after_optimizer_step()
    assert engine.step == 1  # the refused call changed nothing


def test_after_optimizer_step_first_is_refused():
    _, _, engine = build()
    with pytest.raises(UserError, match="without after_backward"):
        engine.after_optimizer_step()


def test_after_backward_per_micro_batch_is_refused():
    model, _, engine = build()
    gen = torch.Generator().manual_seed(0)
    gru_loss(model, gen).backward()
    engine.after_backward()
    gru_loss(model, gen).backward()
    with pytest.raises(UserError, match="once per optimiser step"):
        engine.after_backward()


def test_calls_in_order_after_a_load_are_accepted():
    model, optimizer, engine = build()
    gen = torch.Generator().manual_seed(0)
    gru_loss(model, gen).backward()
    engine.after_backward()
    state = engine.state_dict()
    engine.load_state_dict(state)  # a load starts a fresh step: after_backward is expected next
    sparse_step(model, gru_loss, engine, optimizer, gen)
    assert engine.step == 1


class Wrapper(torch.optim.Optimizer):
    """Shaped like Accelerate's AcceleratedOptimizer: an Optimizer subclass holding the real one."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups


def test_a_wrapped_optimiser_is_refused_with_what_to_pass():
    model = TinyGRU()
    with pytest.raises(UserError, match="got the wrapper Wrapper; pass the AdamW it wraps"):
        SparseEngine(model, Wrapper(torch.optim.AdamW(model.parameters())), SparseConfig(method="static"))


def test_an_optimiser_without_the_sparse_tensors_is_refused():
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.proj_out.parameters())  # e.g. the engine built on the wrong module
    with pytest.raises(UserError, match="does not hold .* of the sparse tensors"):
        SparseEngine(model, optimizer, SparseConfig(method="static"))
    SparseEngine(
        model, optimizer, SparseConfig(method="static", include=["proj_out"])
    )  # only what the optimiser trains: fine
