"""Compact storage: a sparse layer keeps only its active weights, so that parameters, gradients, optimiser
moments and the EMA cost time and memory in proportion to the non-zeros, not to the dense shape.

    plans = choose_compact_plans(model, lambda: loss(model, batch), engine.masks, cache_dir=...)
    storage = make_compact(engine, plans)   # after the engine made (or a checkpoint restored) its masks
    ... train as before: loss.backward(), engine.after_backward(), optimizer.step(), engine.after_optimizer_step(),
    ema.update(model) ...
    storage.to_dense()                      # the model's own layers again (export, FLOPs, sampling code)

Each masked Linear / Conv1d / Conv2d that a sparse training layer computes exactly becomes a CompactLinear /
CompactConv: `values` (a Parameter of its non-zeros, in the CSR order of its mask's MaskPattern) and the
original `bias`. Its product runs by a plan of train_kernels.py (sparse forward, input gradient through the
transposed sparse weight, weight gradient only at active positions) or, with the plan "dense", through the
module's own operation on the weight scattered for that call. The optimiser holds `values` in the dense
weight's place (same position in its groups), so Adam's moments, the gradient clipping and the EMA's lerp
all run over non-zeros only. Tensors no layer computes (a GRU's) stay dense with a mask.

The engine's surgery is unchanged: at a mask update `CompactStorage.expanded` lends it dense copies of the
weights (and of the moments, for a method whose parts read them), the engine drops and grows on them as in
masked mode, and the layers are compacted again at the new masks (the tensors' counts may change: GraNet).
Moments and EMA entries follow in compact form: a position kept keeps its values, a grown one starts at
zero, a dropped one is gone, which is what the engine's surgery does to their dense forms. RigL's grow rule reads the
dense gradient: on the steps of its window the layers also compute the full weight gradient into a sink (one
step in ΔT), all-reduced over ranks like DDP's gradients.

Files keep the masked format: the model's and the EMA's state dicts hold the dense `weight` (hooks on the
layers), the optimiser's state dict holds dense moments (hooks on the optimiser), so a checkpoint written in
one mode resumes in the other. Arithmetic: runs agree with masked runs to fp32 rounding, not bit for bit.
Sparse products and the gradient norm of clipping add in another order, and even the plan "dense", whose
products are the masked path's, can differ in the last bit: the fused Adam and the EMA's lerp treat each
element alike in exact arithmetic, but a tensor's length decides which elements fall into vectorised code
(measured: 1 ulp after 12 steps with one thread, equal bits with two).
"""

import copy
import logging
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernels import _replace, best_of, inputs_of
from sparsedm.sparse.optim_state import MOMENT_KEYS
from sparsedm.sparse.train_kernels import MaskPattern, SparseTrainConv, SparseTrainLinear

log = logging.getLogger(__name__)

DENSE = "dense"  # the plan of a layer that runs the module's own operation on its scattered weight
MASKED = "masked"  # measured: the layer stays a masked dense layer (not compact)


class _CompactProduct(torch.autograd.Function):
    """Y = W M from W's active values; their gradient only at active positions (or, with a sink, the full
    weight gradient handed to the sink and gathered)."""

    @staticmethod
    def forward(ctx, values, m, pattern: MaskPattern, plan, sink):
        ctx.pattern, ctx.plan, ctx.sink = pattern, plan, sink
        ctx.save_for_backward(values, m)
        return pattern.forward_values(values.detach(), m.detach(), plan[0])

    @staticmethod
    def backward(ctx, dy):
        values, m = ctx.saved_tensors
        pattern, plan = ctx.pattern, ctx.plan
        dm = pattern.input_grad_values(values, dy, plan[1]) if ctx.needs_input_grad[1] else None
        dv = None
        if ctx.needs_input_grad[0]:
            if ctx.sink is None:
                dv = pattern.weight_grad_values(dy, m, plan[2])
            else:
                full = dy @ m.t()
                ctx.sink(full)
                dv = pattern.gather(full)
        return dv, dm, None, None, None


class _Compact:
    """What CompactLinear and CompactConv share: storage, the dense plan, state-dict hooks."""

    def _store(self, module: nn.Module, mask: torch.Tensor) -> None:
        weight = module.weight
        self.weight_shape = tuple(weight.shape)
        self.pattern = MaskPattern(mask.reshape(weight.shape[0], -1))
        self.values = nn.Parameter(self.pattern.gather(weight.detach()).clone(), requires_grad=weight.requires_grad)
        self.sink: Optional[Callable[[torch.Tensor], None]] = None
        self.dense_module = [module]  # rebuilt by to_dense; its weight is dropped (a list: not a submodule)
        module.weight = nn.Parameter(weight.new_empty(0), requires_grad=weight.requires_grad)
        self._register_state_dict_hook(_dense_weight_in_state_dict)
        self._register_load_state_dict_pre_hook(_values_from_dense_weight)

    def refresh(self, mask: torch.Tensor) -> None:  # patterns are set by CompactStorage, with the values
        raise UserError("a compact layer's pattern changes with its values: use CompactStorage, not refresh()")

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros at masked positions), made for this call: costs a dense tensor."""
        return self.pattern.scatter(self.values).view(self.weight_shape)

    def product(self, m: torch.Tensor) -> torch.Tensor:
        return _CompactProduct.apply(self.values, m, self.pattern, self.plan, self.sink)

    def _dense_weight_for_call(self) -> torch.Tensor:
        w = self.weight
        if self.sink is not None and w.requires_grad:
            out = self.weight_shape[0]
            w.register_hook(lambda grad: self.sink(grad.reshape(out, -1)))
        return w


def _dense_weight_in_state_dict(module, state_dict, prefix, local_metadata):
    values = state_dict.pop(prefix + "values")
    state_dict[prefix + "weight"] = module.pattern.scatter(values.detach()).view(module.weight_shape)
    return state_dict


def _values_from_dense_weight(module, state_dict, prefix, *args):
    weight = state_dict.pop(prefix + "weight", None)
    if weight is not None:
        if tuple(weight.shape) != module.weight_shape:
            raise UserError(f"{prefix}weight has shape {tuple(weight.shape)}, not {module.weight_shape}")
        state_dict[prefix + "values"] = module.pattern.gather(weight)


class CompactLinear(_Compact, SparseTrainLinear):
    def __init__(self, module: nn.Linear, mask: torch.Tensor, plan):
        nn.Module.__init__(self)
        self._store(module, mask)
        self.bias = module.bias
        self.plan = plan if plan == DENSE else tuple(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan == DENSE:
            return F.linear(x, self._dense_weight_for_call(), self.bias)
        return SparseTrainLinear.forward(self, x)


class CompactConv(_Compact, SparseTrainConv):
    def __init__(self, conv: nn.Module, mask: torch.Tensor, plan):
        nn.Module.__init__(self)
        self._store(conv, mask)
        self.bias = conv.bias
        self.plan = plan if plan == DENSE else tuple(plan)
        self._set_geometry(conv)
        self._dense_op = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d
        self._dense_args = (conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan == DENSE:
            return self._dense_op(x, self._dense_weight_for_call(), self.bias, *self._dense_args)
        return SparseTrainConv.forward(self, x)


def compact_layer(module: nn.Module, mask: torch.Tensor, plan) -> nn.Module:
    if isinstance(module, nn.Linear):
        return CompactLinear(module, mask, plan)
    return CompactConv(module, mask, plan)


def _swap_parameter(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor, convert) -> None:
    """Put `new` in `old`'s place in the optimiser's groups, its state converted moment by moment (dropped
    when `convert` is None: the caller sets it)."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state and convert is not None:
                    optimizer.state[new] = _convert_state(optimizer, state, convert)
                return
    raise UserError("the optimiser does not hold a sparse tensor it should; build it on the model's parameters")


def _carry_over(old_index: torch.Tensor, new_index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """values at `old_index` -> values at `new_index` (both sorted flat positions): a kept position keeps its
    value, a new one gets zero."""
    at = torch.searchsorted(old_index, new_index).clamp_(max=max(len(old_index) - 1, 0))
    kept = old_index[at] == new_index if len(old_index) else torch.zeros_like(new_index, dtype=torch.bool)

    def carry(values: torch.Tensor) -> torch.Tensor:
        return torch.where(kept, values[at], 0) if len(old_index) else values.new_zeros(len(new_index))

    return carry


def _convert_state(optimizer, state: dict, convert) -> dict:
    keys = MOMENT_KEYS[type(optimizer)]
    return {k: convert(v) if k in keys and torch.is_tensor(v) else v for k, v in state.items()}


class CompactStorage:
    """The compact layers of a model (and of its EMA), keyed by their weight's name in the engine."""

    def __init__(self, engine, layers: Dict[str, nn.Module], ema_layers: Dict[str, nn.Module]):
        self.engine, self.layers, self.ema_layers = engine, layers, ema_layers
        self._dense_grads: Dict[str, torch.Tensor] = {}
        self._hooks = [
            engine.optimizer.register_state_dict_post_hook(self._dense_optimizer_state),
            engine.optimizer.register_load_state_dict_pre_hook(self._compact_optimizer_state),
        ]

    # -- RigL's dense gradient -------------------------------------------------------------------------

    def collect_dense_grads(self, on: bool) -> None:
        """From the next backward on, also compute each layer's full weight gradient (RigL's window)."""
        for name, layer in self.layers.items():
            layer.sink = self._sink(name) if on else None

    def _sink(self, name: str) -> Callable[[torch.Tensor], None]:
        def add(grad: torch.Tensor) -> None:  # a fresh tensor autograd does not touch again: kept, not copied
            grad = grad.detach().reshape(self.layers[name].weight_shape)
            acc = self._dense_grads.get(name)
            self._dense_grads[name] = grad if acc is None else acc.add_(grad)

        return add

    def take_dense_grads(self) -> Dict[str, torch.Tensor]:
        """The dense gradients the sinks collected since the last call, averaged over ranks (as DDP averages)."""
        grads, self._dense_grads = self._dense_grads, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for name in sorted(self.layers):  # every rank reduces the same tensors in the same order
                layer = self.layers[name]
                grad = grads.get(name, layer.values.new_zeros(layer.weight_shape))
                dist.all_reduce(grad)
                grads[name] = grad.div_(dist.get_world_size())
        return grads

    # -- the engine's surgery on dense copies ----------------------------------------------------------

    @contextmanager
    def expanded(self, masks: Mapping[str, torch.Tensor], moments: bool) -> Iterator[Tuple[dict, dict]]:
        """({name: dense weight}, {}) for a mask update; with `moments` (a method whose parts read them) the
        optimiser's moments of each dense weight are registered under it, to be read. On exit every layer is
        compacted at `masks` (read then), its moments and EMA entries carried over in compact form. The EMA
        needs no dense copy (the second dict is empty): the engine's surgery sets its dropped and grown
        entries to zero, as the carrying over does."""
        optimizer = self.engine.optimizer
        weights = {}
        for name, layer in self.layers.items():
            weights[name] = layer.weight.detach()
            state = optimizer.state.get(layer.values)
            if moments and state:
                optimizer.state[weights[name]] = _convert_state(optimizer, state, self._scatter(layer))
        try:
            yield weights, {}
        finally:
            for name in self.layers:
                optimizer.state.pop(weights[name], None)
                self._compact(name, masks[name], weights[name])

    @torch.no_grad()
    def _compact(self, name: str, mask: torch.Tensor, weight: torch.Tensor) -> None:
        layer, optimizer = self.layers[name], self.engine.optimizer
        old = layer.pattern
        pattern = MaskPattern(mask.reshape(layer.weight_shape[0], -1))
        carry = _carry_over(old.index, pattern.index)
        layer.pattern = pattern
        values = pattern.gather(weight)
        state = optimizer.state.get(layer.values)
        if values.shape == layer.values.shape:
            layer.values.data = values
            layer.values.grad = None
        else:  # a new count (GraNet): a new Parameter, since autograd keeps the shape of the old one
            new = nn.Parameter(values, requires_grad=layer.values.requires_grad)
            _swap_parameter(optimizer, layer.values, new, None)
            layer.values = new
        if state:
            optimizer.state[layer.values] = _convert_state(optimizer, state, carry)
        if name in self.ema_layers:
            ema = self.ema_layers[name]
            ema.pattern = pattern
            ema.values = nn.Parameter(carry(ema.values.detach()), requires_grad=False)

    @staticmethod
    def _scatter(layer) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda v: layer.pattern.scatter(v).view(layer.weight_shape)

    # -- files in the masked format ---------------------------------------------------------------------

    def _compact_by_id(self, optimizer) -> Dict[int, nn.Module]:
        """{position in the optimiser's state dict: compact layer} (positions count params over the groups)."""
        by_param = {id(layer.values): layer for layer in self.layers.values()}
        positions, i = {}, 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in by_param:
                    positions[i] = by_param[id(p)]
                i += 1
        return positions

    def _dense_optimizer_state(self, optimizer, state_dict: dict) -> dict:
        for i, layer in self._compact_by_id(optimizer).items():
            if i in state_dict["state"]:
                state_dict["state"][i] = _convert_state(optimizer, state_dict["state"][i], self._scatter(layer))
        return state_dict

    def _compact_optimizer_state(self, optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in self._compact_by_id(optimizer).items():
            if i in state:
                state[i] = _convert_state(optimizer, state[i], layer.pattern.gather)
        return {**state_dict, "state": state}

    # -- back to the model's own layers -----------------------------------------------------------------

    @torch.no_grad()
    def to_dense(self) -> None:
        """Put the original modules back, with the dense weights, moments and EMA (for export and reporting)."""
        engine = self.engine
        for name, layer in self.layers.items():
            module_name = name.rpartition(".")[0]
            module = layer.dense_module[0]
            module.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.values.requires_grad)
            module.bias = layer.bias
            _swap_parameter(engine.optimizer, layer.values, module.weight, self._scatter(layer))
            _replace(engine.model, module_name, module)
            engine.params[name] = module.weight
            if name in self.ema_layers:
                ema = self.ema_layers[name]
                ema_module = ema.dense_module[0]
                ema_module.weight = nn.Parameter(ema.weight.detach().clone(), requires_grad=False)
                ema_module.bias = ema.bias
                _replace(engine.ema.module, module_name, ema_module)
        for hook in self._hooks:
            hook.remove()
        engine.set_storage(None)


def compactable(model: nn.Module, names) -> Dict[str, nn.Module]:
    """{weight name: module} of the sparse tensors a compact layer computes exactly."""
    from sparsedm.sparse.train_kernel_choice import candidate_training_layers

    return {f"{n}.weight" if n else "weight": m for n, m in candidate_training_layers(model, names).items()}


@torch.no_grad()
def make_compact(engine, plans: Mapping[str, object]) -> CompactStorage:
    """Swap each layer whose weight is in `plans` ({weight name: "dense" or (FWD, DX, DW)}) for its compact
    layer in the engine's model and EMA, and the optimiser's dense weight (and moments) for its values."""
    if engine.storage is not None:
        raise UserError("the engine's model is compact already")
    if engine.method_record.dense_moments:
        raise UserError(
            f"sparse.method={engine.method} keeps the moments of inactive weights, which compact storage does not "
            "hold; use sparse.kernels=masked"
        )
    unknown = sorted(set(plans) - set(compactable(engine.model, engine.params)))
    if unknown:
        raise UserError(f"no compact layer computes {unknown[0]}: only masked Linear/Conv1d/Conv2d weights")
    layers, ema_layers = {}, {}
    for name, plan in plans.items():
        module_name = name.rpartition(".")[0]
        module = engine.model.get_submodule(module_name)
        old = module.weight
        layer = compact_layer(module, engine.masks[name], plan)
        _swap_parameter(engine.optimizer, old, layer.values, layer.pattern.gather)
        _replace(engine.model, module_name, layer)
        engine.params[name] = layer.values
        layers[name] = layer
        if engine.ema is not None:
            ema_layer = compact_layer(engine.ema.module.get_submodule(module_name), engine.masks[name], plan)
            ema_layer.pattern = layer.pattern
            _replace(engine.ema.module, module_name, ema_layer)
            ema_layers[name] = ema_layer
    storage = CompactStorage(engine, layers, ema_layers)
    engine.set_storage(storage)
    return storage


def measure_compact_plan(module: nn.Module, mask: torch.Tensor, x: torch.Tensor, repeats: int, sync, margin: float):
    """(plan, speed-up over the masked layer): each product's fastest way (train_kernel_choice's part times),
    then the compact layer on that plan, the compact layer on its dense operation (its weight scattered for
    each call: with large weights that costs fresh pages) and the masked module, forward + backward,
    interleaved. A compact plan unless the masked module beats the faster one by `margin`: then MASKED."""
    from sparsedm.sparse.train_kernel_choice import _part_times, fwd_bwd_call
    from sparsedm.sparse.train_kernels import ALL_DENSE, PARTS, sparse_train_module

    with torch.no_grad():
        dy = torch.randn(module(x).shape, dtype=x.dtype, device=x.device)
    x = x.detach().requires_grad_(True)
    times = _part_times(sparse_train_module(module, mask, ALL_DENSE), x, dy, repeats, sync)
    parts = tuple(PARTS[part][min(range(len(t)), key=t.__getitem__)] for part, t in times.items())
    candidates = {DENSE: compact_layer(copy.deepcopy(module), mask, DENSE)}
    if parts != ALL_DENSE or not isinstance(module, nn.Linear):
        candidates[parts] = compact_layer(copy.deepcopy(module), mask, parts)
    calls = [fwd_bwd_call(module, x, dy, mask)] + [fwd_bwd_call(c, x, dy, None) for c in candidates.values()]
    masked, *compact = best_of(calls, repeats, sync)
    for p in module.parameters():
        p.grad = None
    fastest = min(range(len(compact)), key=compact.__getitem__)
    if masked * margin < compact[fastest]:
        return MASKED, masked / compact[fastest]
    return list(candidates)[fastest], masked / compact[fastest]


def _plan_name(plan) -> str:
    return "/".join(plan) if isinstance(plan, tuple) else plan


def _plan_from_name(name: str):
    return name if name in (DENSE, MASKED) else tuple(name.split("/"))


def choose_compact_plans(
    model: nn.Module,
    run_example: Callable[[], object],
    masks: Mapping[str, torch.Tensor],
    cache_dir=None,
    force: Optional[str] = None,
    margin: float = 1.05,
    repeats: int = 5,
) -> Dict[str, object]:
    """{weight name: plan} of the masked layers to make compact: `force` ("dense" or "FWD/DX/DW") for every
    compactable layer, or by measurement (`measure_compact_plan`) on the input each layer sees in
    `run_example`; a layer where the masked module wins is left out (it stays masked). Decisions are cached
    per machine and layer like `use_sparse_training_kernels`'s. Under torch.distributed rank 0 measures and
    every rank takes its plans. Sparseprop is not a candidate: its layers read a dense weight."""
    from sparsedm.sparse.kernels import DecisionCache
    from sparsedm.sparse.train_kernel_choice import CACHE_FILE, parse_plan, training_layer_key

    layers = compactable(model, masks.keys())
    if force is not None:
        plan = DENSE if force == DENSE else parse_plan(f"k:{force}")
        return {name: plan for name in layers}
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    plans: Dict[str, object] = {}
    if not distributed or dist.get_rank() == 0:
        inputs = inputs_of(model, {n.rpartition(".")[0]: m for n, m in layers.items()}, run_example)
        cache = DecisionCache(cache_dir, CACHE_FILE)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        for name, module in layers.items():
            x = inputs.get(name.rpartition(".")[0])
            if x is None:  # not used by the example forward: nothing to measure on, nothing to gain
                continue
            mask = masks[name].to(torch.bool)
            key = "compact " + training_layer_key(module, mask, x)
            if cache.get(key) is None:
                chosen, speedup = measure_compact_plan(module, mask, x, repeats, sync, margin)
                cache.put(key, _plan_name(chosen), speedup)
            chosen = _plan_from_name(cache.get(key)[0])
            if chosen != MASKED:
                plans[name] = chosen
        cache.save()
    if distributed:
        box = [plans]
        dist.broadcast_object_list(box, src=0)
        plans = box[0]
    return plans


def held_bytes(tensors) -> int:
    """Bytes held by distinct tensors' storages (each storage counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total
