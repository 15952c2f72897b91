"""Compact storage (sparse/storage/compact.py): layers that keep only their active weights train as masked layers
do, to fp32 rounding, with every plan forced; parameters, gradients, Adam moments and EMA hold only the non-zeros
(bytes counted); files keep the masked format, so runs resume across modes."""

import copy
import json
import re
from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_chirodiff, tiny_dit, tiny_unet
from torch import nn

from sparsedm.cli import main
from sparsedm.errors import UserError
from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint
from sparsedm.sparse import EMA, SparseConfig, SparseEngine
from sparsedm.sparse.kernel_plan import MODULE_OP, WAYS, KernelPlan, LayerPlan
from sparsedm.sparse.kernels import compact_choice
from sparsedm.sparse.kernels.compact_choice import choose_compact_plans
from sparsedm.sparse.kernels.compact_layers import CompactConv, CompactLinear, compact_layer
from sparsedm.sparse.methods import METHODS
from sparsedm.sparse.storage.compact import CompactStorage
from sparsedm.train.state_bytes import held_bytes

PLANS = ["compact", "torch/torch/sampled", "scipy/scipy/matmul", "matmul/torch/sampled", "torch/matmul/sampled"]
PLAN_NAMES = {"/".join((f, x, w)) for f in WAYS["fwd"] for x in WAYS["dx"] for w in WAYS["dw"]}
# every sparse record whose parts compact storage can supply: a new record is covered without editing the tests
COMPACT_METHODS = [m.name for m in METHODS.values() if m.sparse and not m.reads - CompactStorage.SUPPLIES]


class Net(nn.Module):
    """Convolutions (one strided, one 1-d), Linear layers and a GRU, which stays masked."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.seq = nn.Conv1d(16, 16, 3, padding="same")
        self.lin = nn.Linear(16 * 4 * 4, 32)
        self.gru = nn.GRU(32, 8, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.down(torch.relu(self.conv(x))))
        h = torch.relu(self.seq(h.flatten(2))).flatten(1)
        h, _ = self.gru(torch.relu(self.lin(h))[:, None].expand(-1, 3, -1))
        return self.out(h[:, -1])


def build(method, seed=0, steps=12, **sparse):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    ema = EMA(model, decay=0.9)
    config = SparseConfig(method=method, sparsity=0.7, update_interval=3, t_end=0.9, **sparse)
    engine = SparseEngine(model, optimizer, config, total_steps=steps, ema=ema)
    return model, optimizer, ema, engine


def batches(steps=12):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 4, generator=g)) for _ in range(steps)]


def step(model, optimizer, ema, engine, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    engine.after_backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    update = engine.after_optimizer_step()
    ema.update(model)
    return float(loss.detach()), update


def compact(model, engine, plan, x):
    engine.compact(SparseConfig(kernels=plan).kernel_plan, lambda: model(x))
    return engine.storage


def train(method, plan=None, **sparse):
    model, optimizer, ema, engine = build(method, **sparse)
    data = batches()
    storage = compact(model, engine, plan, data[0][0]) if plan else None
    losses, updates = [], 0
    for x, y in data:
        loss, update = step(model, optimizer, ema, engine, x, y)
        losses.append(loss)
        updates += update is not None and update.get("replaced", 0) > 0
    files = (model.state_dict(), optimizer.state_dict(), ema.state_dict())
    assert storage is None or len(storage.layers) == 5  # every Linear/Conv compact, the GRU masked
    engine.densify()
    return losses, files, engine, updates


def test_the_records_give_the_equivalence_tests_their_methods():
    assert {"static", "rigl", "magran", "granet", "mest"} <= set(COMPACT_METHODS) and "snfs" not in COMPACT_METHODS


@pytest.mark.parametrize("method", COMPACT_METHODS)
@pytest.mark.parametrize("plan", PLANS)
def test_compact_training_equals_masked_training(method, plan):
    ref_losses, (ref_model, ref_opt, ref_ema), ref_engine, updates = train(method)
    losses, (model, opt, ema), engine, _ = train(method, plan)
    assert ref_engine.masks_fingerprint() == engine.masks_fingerprint()  # the same drops and growths
    assert engine.nonzeros == ref_engine.nonzeros
    if method != "static":
        assert updates >= 2  # topology changes happened inside the run
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    # the files are in the masked format: the same keys and shapes, the same values to fp32 rounding
    assert set(ref_model) == set(model)
    for name, tensor in ref_model.items():
        torch.testing.assert_close(model[name], tensor, rtol=1e-4, atol=5e-5, msg=name)
    for name, tensor in ref_ema["module"].items():
        torch.testing.assert_close(ema["module"][name], tensor, rtol=1e-4, atol=5e-5, msg=name)
    for i, state in ref_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt["state"][i][key].shape == state[key].shape
            torch.testing.assert_close(opt["state"][i][key], state[key], rtol=1e-3, atol=1e-7)
    # after to_dense the model is the masked model's again
    for name, p in engine.model.named_parameters():
        torch.testing.assert_close(p.detach(), ref_engine.model.get_parameter(name).detach(), rtol=1e-4, atol=5e-5)


def optimizer_bytes(optimizer):
    return held_bytes(t for state in optimizer.state.values() for t in state.values())


def test_memory_of_weights_gradients_moments_and_ema_follows_the_non_zeros():
    """Bytes counted: each compact layer holds nnz values, gradients, two Adam moments and EMA values instead of
    the dense numel of each; everything else (biases, the masked GRU, Adam's step counters) is unchanged."""
    held = {}
    for plan in (None, "torch/torch/sampled"):
        model, optimizer, ema, engine = build("rigl")
        data = batches()
        storage = compact(model, engine, plan, data[0][0]) if plan else None
        for x, y in data[:4]:  # through an update (step 3)
            step(model, optimizer, ema, engine, x, y)
        model(data[5][0]).sum().backward()  # gradients present
        held[plan] = {
            "params": held_bytes(model.parameters()),
            "grads": held_bytes(p.grad for p in model.parameters()),
            "moments": optimizer_bytes(optimizer),
            "ema": held_bytes(ema.module.parameters()),
        }
        if plan:
            layers = storage.layers
            saved = {n: (layer.weight_shape, layer.values.numel()) for n, layer in layers.items()}
            assert set(layers) == {"conv.weight", "down.weight", "seq.weight", "lin.weight", "out.weight"}
            for name, layer in layers.items():
                nnz = engine.nonzeros[name]
                assert layer.values.numel() == nnz == layer.values.grad.numel()
                state = optimizer.state[layer.values]
                assert state["exp_avg"].numel() == state["exp_avg_sq"].numel() == nnz
                assert storage.ema_layers[name].values.numel() == nnz
                assert isinstance(layer, CompactLinear if name in ("lin.weight", "out.weight") else CompactConv)
    freed = sum(4 * (torch.Size(shape).numel() - nnz) for shape, nnz in saved.values())
    for part, factor in (("params", 1), ("grads", 1), ("moments", 2), ("ema", 1)):
        assert held[None][part] - held["torch/torch/sampled"][part] == factor * freed, part
    assert freed > 0.5 * held[None]["params"]  # most of the model is compact at S = 0.7


def test_rigl_grows_from_the_dense_gradient_only_inside_its_window():
    model, optimizer, ema, engine = build("rigl")
    data = batches()
    storage = compact(model, engine, "torch/torch/sampled", data[0][0])
    sinks = []
    for x, y in data[:6]:
        sinks.append(all(layer.sink is not None for layer in storage.layers.values()))
        step(model, optimizer, ema, engine, x, y)
    assert sinks == [False, False, True, False, False, True]  # updates at steps 3 and 6 (ΔT = 3)


def test_a_run_resumes_across_modes_from_the_same_file(tmp_path):
    """Six steps compact, saved, then six more in masked mode equal twelve compact steps to fp32 rounding."""

    def run(first_plan, second_plan, split):
        model, optimizer, ema, engine = build("rigl")
        data = batches()
        if first_plan:
            compact(model, engine, first_plan, data[0][0])
        for x, y in data[:split]:
            step(model, optimizer, ema, engine, x, y)
        files = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "engine": engine.state_dict(),
        }
        torch.save(files, tmp_path / "state.pt")
        engine.densify()
        model, optimizer, ema, engine = build("rigl")
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        engine.load_state_dict(state["engine"])
        if second_plan:
            compact(model, engine, second_plan, data[0][0])
        for x, y in data[split:]:
            step(model, optimizer, ema, engine, x, y)
        return {k: v.clone() for k, v in model.state_dict().items()}, engine.masks_fingerprint()

    straight, masks = run("torch/torch/sampled", "torch/torch/sampled", 12)
    for first, second in (("torch/torch/sampled", None), (None, "torch/torch/sampled")):
        resumed, resumed_masks = run(first, second, 7)  # inside the window before the update at 9
        assert resumed_masks == masks
        for name, tensor in straight.items():
            torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=5e-5, msg=name)


def test_refusals_are_one_line():
    with pytest.raises(UserError, match="sparse.kernels='fast' is unknown"):
        SparseConfig(kernels="fast")
    with pytest.raises(UserError, match="sparse.kernels='torch/torch/torch' is unknown"):
        SparseConfig(kernels="torch/torch/torch")
    snfs = "sparse.method=snfs reads moments of inactive weights, which sparse.kernels=compact does not hold"
    with pytest.raises(UserError, match=snfs):  # at start-up, before any layer is touched
        build("snfs", kernels="compact")
    model, optimizer, ema, engine = build("snfs")
    with pytest.raises(UserError, match=snfs):
        compact(model, engine, "compact", batches()[0][0])
    model, optimizer, ema, engine = build("rigl")
    with pytest.raises(UserError, match="no compact layer computes gru.weight_hh_l0"):
        CompactStorage(engine.storage, model, {"gru.weight_hh_l0": MODULE_OP}, engine.masks)
    compact(model, engine, "compact", batches()[0][0])
    with pytest.raises(UserError, match="call it before SparseEngine.compact"):
        engine.load_state_dict(engine.state_dict())
    with pytest.raises(UserError, match="SparseEngine.compact on a compact model"):
        compact(model, engine, "compact", batches()[0][0])
    for kernels, run_example in (("masked", lambda: None), ("measure", None)):
        with pytest.raises(UserError, match=f"SparseEngine.compact got sparse.kernels={kernels}; give a compact plan"):
            engine.compact(SparseConfig(kernels=kernels).kernel_plan, run_example)


def test_measured_plans_are_cached_per_layer(tmp_path):
    """Measured with a margin no masked layer can beat, so every layer is compact: the cache holds five plans
    and a second choice reads them back."""
    model, optimizer, ema, engine = build("rigl")
    x = batches()[0][0]
    plans = choose_compact_plans(model, lambda: model(x), engine.masks, cache_dir=tmp_path, repeats=1, margin=1e9)
    assert set(plans) == {"conv.weight", "down.weight", "seq.weight", "lin.weight", "out.weight"}
    cached = json.loads((tmp_path / compact_choice.CACHE_FILE).read_text())
    (entries,) = cached.values()
    assert len(entries) == 5 and {plan for plan, _ in entries.values()} <= {"module-op", *PLAN_NAMES}
    assert sorted(plan for plan, _ in entries.values()) == sorted(p.name for p in plans.values())
    assert choose_compact_plans(model, lambda: model(x), engine.masks, cache_dir=tmp_path) == plans  # from the file


@pytest.mark.parametrize("margin, compacted", [(1e9, 5), (1e-9, 0)])
def test_the_masked_layer_is_kept_only_where_it_beats_compact_by_the_margin(margin, compacted):
    """margin: how much faster the masked module must be; huge -> never, tiny -> always."""
    model, optimizer, ema, engine = build("rigl")
    x = batches()[0][0]
    plans = choose_compact_plans(model, lambda: model(x), engine.masks, margin=margin, repeats=1)
    assert len(plans) == compacted


def train_masked_then_compact(build, batch, loss_of, method, plan, steps=6, **sparse):
    """The same 6 steps masked and with `plan`, from the same seed: per run its state dict, masks
    fingerprint, storage and losses."""
    results = []
    for kernels in (None, plan):
        torch.manual_seed(0)
        model = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        ema = EMA(model, decay=0.9)
        config = SparseConfig(method=method, sparsity=0.8, update_interval=2, **sparse)
        engine = SparseEngine(model, optimizer, config, steps, ema)
        inputs = batch()
        if kernels:
            engine.compact(replace(config, kernels=kernels).kernel_plan, lambda: model(*inputs))
        losses = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(model(*inputs).sample, inputs[0])
            loss.backward()
            losses.append(float(loss.detach()))
            engine.after_backward()
            optimizer.step()
            engine.after_optimizer_step()
            ema.update(model)
        results.append((model.state_dict(), engine.masks_fingerprint(), engine.storage, losses, len(engine.masks)))
    return results


def assert_same_weights(masked: dict, compact: dict) -> None:
    for name, tensor in masked.items():
        # an attention key bias has an exact gradient of 0 (softmax ignores a shift shared by a query's keys);
        # Adam turns the rounding noise there into lr-sized steps that differ between the storages
        if not name.endswith("to_k.bias"):
            torch.testing.assert_close(compact[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", COMPACT_METHODS)
@pytest.mark.parametrize("plan", ["compact", "torch/torch/sampled", "scipy/scipy/matmul"])
def test_a_tiny_unet_trains_compact_with_attention_and_resampling(method, plan):
    def batch():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 700])

    masked, compact = train_masked_then_compact(tiny_unet, batch, lambda y, x: y.square().mean(), method, plan)
    assert masked[1] == compact[1]
    assert len(compact[2].layers) > 10
    assert_same_weights(masked[0], compact[0])


@pytest.mark.parametrize("method", COMPACT_METHODS)
@pytest.mark.parametrize("plan", ["compact", "torch/torch/sampled", "scipy/scipy/matmul"])
def test_a_tiny_dit_trains_compact_as_masked(method, plan):
    """Every sparse tensor of the DiT is a Linear (attention, feed-forward, adaLN, final layer) or the patch
    embedding's strided conv, so all of them go compact: masks, losses and weights as masked training's."""

    def batch():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700]), torch.zeros(2, dtype=torch.long)

    masked, compact = train_masked_then_compact(tiny_dit, batch, lambda y, x: (y - x).square().mean(), method, plan)
    assert masked[1] == compact[1]
    assert len(compact[2].layers) == compact[4] == 2 * 7 + 3  # per block 7 Linear; the patch conv, the final 2
    torch.testing.assert_close(torch.tensor(compact[3]), torch.tensor(masked[3]), rtol=1e-5, atol=1e-6)
    assert_same_weights(masked[0], compact[0])


real_cache = compact_choice.DecisionCache
TINY = [*tiny_chirodiff(), "model.num_layers=1", "train.log_every=4", "train.val_batches=1", "train.steps=12"]
TINY += ["sparse.update_interval=4", "sparse.prune_rate=0.3", "sparse.t_end=1.0", "train.checkpoint_every=100"]


def run_cli(out, cache, *overrides, flags=()):
    args = ["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress", *TINY, cache]
    return main([*args, *overrides, *flags])


@pytest.mark.parametrize(
    "kernels", ["measure", "compact", "torch/torch/sampled", "scipy/scipy/matmul", "matmul/torch/sampled"]
)
def test_sparsedm_train_with_kernels_equals_masked_training(tmp_path, tiny_cache, kernels, monkeypatch, caplog):
    """The ChiroDiff denoiser (its Linear layers compact, its GRU masked) through `sparsedm train`. `measure`
    measures afresh (no cache) with a margin no masked layer can beat, so that its layers do become compact."""
    real = compact_choice.measure_compact_plan
    monkeypatch.setattr(compact_choice, "DecisionCache", lambda cache_dir, file: real_cache(None, file))
    monkeypatch.setattr(
        compact_choice,
        "measure_compact_plan",
        lambda m, mask, x, repeats, sync, margin, block: real(m, mask, x, 1, sync, 1e9, block),
    )
    assert run_cli(tmp_path / "masked", tiny_cache, "sparse.method=rigl") == 0
    caplog.set_level("INFO", logger="sparsedm")
    assert run_cli(tmp_path / "compact", tiny_cache, "sparse.method=rigl", f"sparse.kernels={kernels}") == 0
    compacted = re.findall(rf"sparse.kernels={re.escape(kernels)}: (\d+) compact layers", caplog.text)
    assert compacted and int(compacted[0]) >= 2, caplog.text[-500:]  # proj_in and proj_out at least
    a = load_checkpoint(list_checkpoints(tmp_path / "masked" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "compact" / "checkpoints")[-1])
    for name, mask in a["engine"]["masks"].items():
        assert torch.equal(mask, b["engine"]["masks"][name]), name
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    summary = json.loads((tmp_path / "compact" / "summary.json").read_text())
    masked = json.loads((tmp_path / "masked" / "summary.json").read_text())
    for key in ("params_nonzero", "params_total", "flops_forward_sparse", "flops_train_step", "masks_sha256"):
        assert summary[key] == masked[key], key


@pytest.mark.parametrize("method", [m for m in COMPACT_METHODS if METHODS[m].dynamic])
def test_sparsedm_train_of_every_dynamic_method_gives_the_same_masks_in_both_storages(tmp_path, tiny_cache, method):
    """The method list comes from the records: a new one (MEST) trains compact through `sparsedm train`."""
    assert run_cli(tmp_path / "masked", tiny_cache, f"sparse.method={method}") == 0
    assert run_cli(tmp_path / "compact", tiny_cache, f"sparse.method={method}", "sparse.kernels=compact") == 0
    summaries = [json.loads((tmp_path / mode / "summary.json").read_text()) for mode in ("masked", "compact")]
    assert summaries[0]["masks_sha256"] == summaries[1]["masks_sha256"]
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (tmp_path / mode / "metrics.jsonl").read_text().splitlines())
            if "loss" in r
        ]
        for mode in ("masked", "compact")
    ]
    assert losses[0] and torch.allclose(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)


def test_sparsedm_train_resumes_a_masked_run_with_compact_kernels(tmp_path, tiny_cache):
    assert run_cli(tmp_path / "straight", tiny_cache, "sparse.method=magran") == 0
    assert run_cli(tmp_path / "split", tiny_cache, "sparse.method=magran", "train.stop_at=6") == 0
    resumed = run_cli(
        tmp_path / "split", tiny_cache, "sparse.method=magran", "sparse.kernels=compact", flags=["--resume"]
    )
    assert resumed == 0
    a = load_checkpoint(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_sparsedm_train_refuses_an_unknown_kernel_mode(tmp_path, tiny_cache, capsys):
    assert run_cli(tmp_path / "run", tiny_cache, "sparse.kernels=fast") == 2
    assert "sparse.kernels='fast' is unknown" in capsys.readouterr().err
    assert run_cli(tmp_path / "bf16", tiny_cache, "sparse.kernels=measure", "train.precision=bf16") == 2
    assert "sparse.kernels=measure trains in fp32 only" in capsys.readouterr().err


def test_rigl_accumulating_dense_gradients_over_two_steps_matches_masked():
    """sparse.grad_accumulation=2: the window is two steps, the sinks' gradients summed over both."""
    ref_losses, (ref_model, _, _), ref_engine, updates = train("rigl", grad_accumulation=2)
    losses, (model, _, _), engine, _ = train("rigl", "torch/torch/sampled", grad_accumulation=2)
    assert updates >= 2 and engine.masks_fingerprint() == ref_engine.masks_fingerprint()
    for name, tensor in ref_model.items():
        torch.testing.assert_close(model[name], tensor, rtol=1e-4, atol=5e-5, msg=name)


def block_masked(module: nn.Module, block: int, density: float, seed: int = 0) -> torch.Tensor:
    """A mask of whole block x block tiles over the weight's 2-D view, the weight zeroed outside it."""
    rows, cols = module.weight.shape[0], module.weight[0].numel()
    g = torch.Generator().manual_seed(seed)
    tiles = torch.rand(rows // block, cols // block, generator=g) < density
    tiles[0, 0], tiles[-1, -1] = True, False  # a tile on, one off
    mask = tiles[:, None, :, None].expand(-1, block, -1, block).reshape(module.weight.shape)
    with torch.no_grad():
        module.weight.mul_(mask)
    return mask


@pytest.mark.parametrize("plan", ["block/block/block", "block/torch/sampled", "matmul/block/block"])
@pytest.mark.parametrize(
    "make, block, x_shape",
    [
        (lambda: nn.Linear(32, 48), 8, (5, 32)),
        (lambda: nn.Linear(64, 16, bias=False), 4, (2, 7, 64)),
        (lambda: nn.Linear(16, 32), 16, (3, 16)),  # two tiles, one on: a block-row without tiles
        (lambda: nn.Conv2d(4, 8, 2, stride=2), 4, (2, 4, 8, 8)),  # DiT's patch embedding: (8, 16) as 2-D
    ],
)
def test_the_block_way_gives_the_masked_layers_outputs_and_gradients(plan, make, block, x_shape):
    torch.manual_seed(0)
    module = make()
    mask = block_masked(module, block, 0.4)
    x = torch.randn(x_shape)
    layer = compact_layer(copy.deepcopy(module), mask, LayerPlan.from_name(plan), block)
    results = []
    for candidate in (module, layer):
        xi = x.clone().requires_grad_(True)
        y = candidate(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
        weight_grad = module.weight.grad * mask if candidate is module else layer.pattern.scatter(layer.values.grad)
        bias_grad = None if candidate.bias is None else candidate.bias.grad
        results.append((y.detach(), xi.grad, weight_grad.reshape(mask.shape), bias_grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert layer.pattern.block_size == block


@pytest.mark.parametrize("block", [1, 4])
def test_a_compact_layer_loads_a_dense_weight_state_dict(block):
    """load_state_dict on a compact layer takes the dense `weight` of its state dict back into its values."""
    module = nn.Linear(16, 8)
    mask = block_masked(module, block, 0.5)
    layer = compact_layer(copy.deepcopy(module), mask, LayerPlan.from_name("matmul/matmul/matmul"), block)
    state = {"weight": torch.randn(8, 16), "bias": torch.zeros(8)}
    layer.load_state_dict(state)
    torch.testing.assert_close(layer.weight, state["weight"] * mask)


def _outputs_and_gradients(candidate, module, layer, mask, x):
    xi = x.clone().requires_grad_(True)
    y = candidate(xi)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    weight_grad = module.weight.grad * mask if candidate is module else layer.pattern.scatter(layer.values.grad)
    return y.detach(), xi.grad, weight_grad.reshape(mask.shape)


@pytest.mark.parametrize("plan", ["torch/torch/sampled", "scipy/scipy/matmul", "block/block/block"])
def test_a_block_pattern_holds_indices_per_tile_and_builds_per_element_ones_only_for_other_ways(plan):
    """Tiles of 8 x 8: on the block way the pattern's index tensors take under a tenth of nnz int32s (per tile,
    not per element); torch, scipy and sampled build the per-element arrays they need, and all equal masked."""
    torch.manual_seed(0)
    module = nn.Linear(64, 48)
    mask = block_masked(module, 8, 0.4)
    layer = compact_layer(copy.deepcopy(module), mask, LayerPlan.from_name(plan), 8)
    x = torch.randn(5, 64)
    want = _outputs_and_gradients(module, module, layer, mask, x)
    got = _outputs_and_gradients(layer, module, layer, mask, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    layer.load_state_dict(layer.state_dict())  # the hooks: dense weight out, values back in CSR order
    torch.testing.assert_close(layer.weight, module.weight * mask)
    index_bytes = held_bytes(layer.pattern.tensors())
    if plan == "block/block/block":
        assert index_bytes < layer.pattern.nnz * 4 / 10
    else:
        assert index_bytes >= layer.pattern.nnz * 4  # at least the CSR column indices, int32 per non-zero


@pytest.mark.parametrize("method", COMPACT_METHODS)
@pytest.mark.parametrize("plan", ["block/block/block", "measure"])
def test_a_tiny_dit_with_block_masks_trains_compact_as_masked(method, plan):
    """sparse.block_size=8 on the tiny DiT, whose 2-D weight shapes all divide by 8: the block way (forced, or
    raced by measure) gives the masks, losses and weights of masked training."""

    def batch():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700]), torch.zeros(2, dtype=torch.long)

    masked, compact = train_masked_then_compact(
        tiny_dit, batch, lambda y, x: (y - x).square().mean(), method, plan, block_size=8
    )
    assert masked[1] == compact[1]
    assert all(layer.pattern.block_size == 8 for layer in compact[2].layers.values())
    torch.testing.assert_close(torch.tensor(compact[3]), torch.tensor(masked[3]), rtol=1e-5, atol=1e-6)
    assert_same_weights(masked[0], compact[0])


def test_a_forced_block_plan_is_refused_on_unstructured_masks():
    model, optimizer, ema, engine = build("rigl")
    with pytest.raises(UserError, match="sparse.kernels=block/block/block uses the block way"):
        engine.compact(KernelPlan.parse("block/block/block"), None)
