"""SNFS (sparse momentum, Dettmers & Zettlemoyer 2019): grow by |Adam's exp_avg|, regrowth redistributed over
the tensors by their mean |momentum|; checked against a hand computation on two 8-weight tensors."""

import torch
from torch import nn

from sparsedm.sparse import SparseConfig, SparseEngine, train_flops_per_step
from sparsedm.sparse.redistribution import apportion, by_momentum
from sparsedm.sparse.tensor_state import TensorState


def _engine():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 4, bias=False))  # 8 weights each
    optimizer = torch.optim.Adam(model.parameters())
    config = SparseConfig(
        method="snfs",
        sparsity=0.5,
        distribution="uniform",
        prune_rate=0.5,
        prune_rate_decay="constant",
        update_interval=1,
        t_end=10,
    )
    return model, optimizer, SparseEngine(model, optimizer, config, total_steps=10)


def _set(engine, optimizer, name, mask, weight, exp_avg):
    param = engine.params[name]
    shape = param.shape
    engine.masks[name] = torch.tensor(mask, dtype=torch.bool).view(shape)
    param.data.copy_(torch.tensor(weight).view(shape))
    optimizer.state[param] = {"step": torch.tensor(1.0), "exp_avg": torch.tensor(exp_avg).view(shape)}
    optimizer.state[param]["exp_avg_sq"] = torch.ones(shape)


def test_snfs_drops_by_magnitude_grows_by_momentum_and_moves_density_by_hand():
    model, optimizer, engine = _engine()
    assert engine.nonzeros == {"0.weight": 4, "1.weight": 4}
    # tensor A: active 0-3, mean |m| over them 3.0; tensor B: active 4-7, mean |m| 1.0
    _set(engine, optimizer, "0.weight", [1, 1, 1, 1, 0, 0, 0, 0], [0.5, -0.1, 2.0, 0.3, 0, 0, 0, 0],
         [3.0, -3.0, 3.0, 3.0, 0.2, -5.0, 1.0, 4.0])  # fmt: skip
    _set(engine, optimizer, "1.weight", [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1.0, -0.2, 0.05, 3.0],
         [0.5, 2.0, -0.1, 0.3, 1.0, -1.0, 1.0, 1.0])  # fmt: skip
    engine.after_backward()  # no gradients: SNFS reads the momentum set above
    stats = engine.after_optimizer_step()  # step 1 is an update step (ΔT = 1)

    # p = 0.5 of 4 active: each tensor drops its 2 smallest |W| (A: 1, 3; B: 6, 5); the 4 regrown weights are
    # shared 3 : 1 by mean |momentum| (3.0 vs 1.0): A grows its 3 largest |m| inactive (5, 7, 6), B its 1 (1)
    dropped_a, grown_a = engine.last_update["0.weight"]
    dropped_b, grown_b = engine.last_update["1.weight"]
    assert (set(dropped_a.tolist()), set(grown_a.tolist())) == ({1, 3}, {5, 6, 7})
    assert (set(dropped_b.tolist()), set(grown_b.tolist())) == ({5, 6}, {1})
    assert engine.masks["0.weight"].flatten().nonzero().flatten().tolist() == [0, 2, 5, 6, 7]
    assert engine.masks["1.weight"].flatten().nonzero().flatten().tolist() == [1, 4, 7]
    assert engine.nonzeros == {"0.weight": 5, "1.weight": 3} and stats["replaced"] == 4
    assert engine.sparsity() == 0.5  # the total is kept
    # the one place of surgery: dropped and grown weights and their moments are zero
    for name, (dropped, grown) in engine.last_update.items():
        param, state = engine.params[name], optimizer.state[engine.params[name]]
        changed = torch.cat([dropped, grown])
        assert not param.detach().flatten()[changed].any()
        assert not state["exp_avg"].flatten()[changed].any() and not state["exp_avg_sq"].flatten()[changed].any()
    assert engine.counts_history == [(0, {"0.weight": 4, "1.weight": 4}), (1, {"0.weight": 5, "1.weight": 3})]


def test_momentum_redistribution_fills_a_full_tensor_and_gives_the_rest_to_the_others():
    def state(momentum, mask):
        m = torch.tensor(momentum)
        return TensorState("x", torch.tensor(mask, dtype=torch.bool), torch.Generator(), momentum=m)

    states = {"a": state([3.0, 3.0, 0.0], [1, 1, 0]), "b": state([1.0, 1.0, 0.0], [1, 1, 0])}
    # 4 to regrow, 3 : 1 by momentum, but a has room for 1 only: b takes the other 3
    assert by_momentum({"a": 2, "b": 2}, states, {"a": 1, "b": 5}) == {"a": 1, "b": 3}
    assert by_momentum({"a": 2, "b": 2}, states, {"a": 5, "b": 5}) == {"a": 3, "b": 1}
    no_momentum = {n: TensorState("x", s.mask, s.generator) for n, s in states.items()}
    assert by_momentum({"a": 2, "b": 1}, no_momentum, {"a": 5, "b": 5}) == {"a": 2, "b": 1}
    assert apportion(5, {"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 2, "b": 2, "c": 1}  # largest remainder, in order


def test_snfs_keeps_the_optimisers_moments_dense_and_the_weights_sparse_while_training():
    model, optimizer, engine = _engine()
    engine.schedule = None  # no topology change: only the step's own calls
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        engine.after_optimizer_step()
    for name, param in engine.params.items():
        inactive = ~engine.masks[name]
        assert not param.detach()[inactive].any()
        assert optimizer.state[param]["exp_avg"][inactive].abs().sum() > 0  # the grow score has information


def test_snfs_counts_and_history_survive_a_checkpoint_and_its_flops_rule():
    model, optimizer, engine = _engine()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        engine.after_optimizer_step()
    _, optimizer2, again = _engine()
    again.load_state_dict(engine.state_dict())
    assert again.nonzeros == engine.nonzeros and again.counts_history == engine.counts_history
    assert train_flops_per_step("snfs", 1.0, 4.0, 100) == 2.0 + 4.0  # 2 f_S + f_D at every step
