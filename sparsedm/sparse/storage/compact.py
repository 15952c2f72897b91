"""Compact storage: a sparse layer keeps only its active weights, so that parameters, gradients, optimiser
moments and the EMA cost time and memory in proportion to the non-zeros, not to the dense shape.

    engine.compact(plan, run_example, cache_dir)   # after the engine made (or a checkpoint restored) its masks
    ... train as before ...
    engine.densify()                               # the model's own layers again (export, FLOPs, sampling)

Each masked Linear / Conv1d / Conv2d given a plan becomes a compact layer (kernels/compact_layers.py) in the
model and in the EMA; the optimiser holds its `values` in the dense weight's place (same position in its
groups), so Adam's moments, the gradient clipping and the EMA's lerp all run over non-zeros only. Tensors no
layer computes (a GRU's), and layers measured faster masked, stay in a masked storage inside this one.

At a mask update `dense_views` lends the engine dense copies of the weights (and of the moments, for a method
whose parts read them, and of the masked gradient); the engine drops and grows on them as in masked mode, and
the layers are compacted again at the new masks (the counts may change: GraNet). Moments and EMA entries
follow in compact form: a kept position keeps its values, a grown one starts at zero, a dropped one is gone,
which is what the engine's surgery does to their dense forms. The dense gradient (RigL's grow rule) is
computed on the steps of its window into a sink per layer, all-reduced over ranks like DDP's gradients. The
moments of inactive weights are not held: a method that reads them (SNFS) is refused at start-up.

Files keep the masked format: the model's and the EMA's state dicts hold the dense `weight` (hooks on the
layers), the optimiser's state dict holds dense moments (hooks on the optimiser), so a checkpoint written in
one mode resumes in the other. Arithmetic: runs agree with masked runs to fp32 rounding, not bit for bit.
Sparse products and the gradient norm of clipping add in another order, and even the module-op plan, whose
products are the masked path's, can differ in the last bit: the fused Adam and the EMA's lerp treat each
element alike in exact arithmetic, but a tensor's length decides which elements fall into vectorised code
(measured: 1 ulp after 12 steps with one thread, equal bits with two).
"""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernel_plan import LayerPlan
from sparsedm.sparse.kernels.block_pattern import mask_pattern
from sparsedm.sparse.kernels.compact_choice import compactable
from sparsedm.sparse.kernels.compact_layers import compact_layer
from sparsedm.sparse.kernels.measure import replace_module
from sparsedm.sparse.optim_state import MOMENT_KEYS
from sparsedm.sparse.storage.base import DenseViews, Storage
from sparsedm.sparse.storage.masked import MaskedStorage
from sparsedm.sparse.tensor_state import Read


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


def _scatter(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: layer.pattern.scatter(v).view(layer.weight_shape)


class CompactStorage(Storage):
    """The compact layers of a model (and of its EMA), keyed by their weight's name; the rest masked."""

    SUPPLIES = frozenset({Read.WEIGHT, Read.GRAD, Read.DENSE_GRAD, Read.MOMENTUM})

    @torch.no_grad()
    def __init__(
        self, masked: MaskedStorage, model: nn.Module, plans: Mapping[str, LayerPlan], masks, block_size: int = 1
    ):
        """Swap each layer whose weight is in `plans` for its compact layer in `model` and the EMA, and the
        optimiser's dense weight (and moments) for its values. `block_size`: the engine's sparse.block_size, which
        its masks' tiles have (for the `block` way)."""
        unknown = sorted(set(plans) - set(compactable(model, masked.params)))
        if unknown:
            raise UserError(f"no compact layer computes {unknown[0]}: only masked Linear/Conv1d/Conv2d weights")
        self.model, self.optimizer, self.ema = model, masked.optimizer, masked.ema
        self.block_size = block_size
        self.rest = MaskedStorage({n: p for n, p in masked.params.items() if n not in plans}, self.optimizer, self.ema)
        self.layers: Dict[str, nn.Module] = {}
        self.ema_layers: Dict[str, nn.Module] = {}
        for name, plan in plans.items():
            module_name = name.rpartition(".")[0]
            module = model.get_submodule(module_name)
            old = module.weight
            layer = compact_layer(module, masks[name], plan, block_size)
            _swap_parameter(self.optimizer, old, layer.values, layer.pattern.gather)
            replace_module(model, module_name, layer)
            self.layers[name] = layer
            if self.ema is not None:
                ema_layer = compact_layer(self.ema.module.get_submodule(module_name), masks[name], plan, block_size)
                ema_layer.pattern = layer.pattern
                replace_module(self.ema.module, module_name, ema_layer)
                self.ema_layers[name] = ema_layer
        self._dense_grads: Dict[str, torch.Tensor] = {}
        self._hooks = [
            self.optimizer.register_state_dict_post_hook(self._dense_optimizer_state),
            self.optimizer.register_load_state_dict_pre_hook(self._compact_optimizer_state),
        ]

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {**self.rest.tensors(), **{n: layer.values for n, layer in self.layers.items()}}

    def refuse_new_masks(self, what: str) -> None:
        raise UserError(
            f"SparseEngine.{what} on a compact model: call it before SparseEngine.compact (or densify first)"
        )

    # -- gradients ---------------------------------------------------------------------------------------

    def mask_gradients(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.rest.mask_gradients(masks)  # a compact layer's gradient is at its active weights only

    def zero_masked_weights(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.rest.zero_masked_weights(masks)

    def apply_masks(self, masks: Mapping[str, torch.Tensor], moments: bool) -> None:
        self.rest.apply_masks(masks, moments)

    def request_dense_gradients(self, on: bool) -> None:
        for name, layer in self.layers.items():
            layer.sink = self._sink(name) if on else None

    def _sink(self, name: str) -> Callable[[torch.Tensor], None]:
        def add(grad: torch.Tensor) -> None:  # a fresh tensor autograd does not touch again: kept, not copied
            grad = grad.detach().reshape(self.layers[name].weight_shape)
            acc = self._dense_grads.get(name)
            self._dense_grads[name] = grad if acc is None else acc.add_(grad)

        return add

    def dense_gradients(self) -> Dict[str, Optional[torch.Tensor]]:
        """The masked part's, and the compact layers' that the sinks collected since the last call, averaged
        over ranks (as DDP averages)."""
        grads, self._dense_grads = self._dense_grads, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for name in sorted(self.layers):  # every rank reduces the same tensors in the same order
                layer = self.layers[name]
                grad = grads.get(name, layer.values.new_zeros(layer.weight_shape))
                dist.all_reduce(grad)
                grads[name] = grad.div_(dist.get_world_size())
        return {**self.rest.dense_gradients(), **grads}

    # -- the engine's surgery on dense copies ----------------------------------------------------------

    @contextmanager
    def dense_views(self, masks: Mapping[str, torch.Tensor], reads) -> Iterator[DenseViews]:
        """Dense copies of the compact layers' weights, with the optimiser's moments registered under them when
        a part reads moments; on exit each layer is compacted at `masks`, its moments and EMA entries carried
        over. The EMA needs no dense copy: the engine's surgery sets its dropped and grown entries to zero,
        as the carrying over does."""
        moments = Read.MOMENTUM in reads
        weights, grads = {}, {}
        for name, layer in self.layers.items():
            weights[name] = layer.weight.detach()
            state = self.optimizer.state.get(layer.values)
            if moments and state:
                self.optimizer.state[weights[name]] = _convert_state(self.optimizer, state, _scatter(layer))
            if Read.GRAD in reads:
                grad = layer.values.grad
                grads[name] = _scatter(layer)(grad) if grad is not None else torch.zeros_like(weights[name])
        try:
            with self.rest.dense_views(masks, reads) as rest:
                yield DenseViews({**rest.weights, **weights}, {**rest.grads, **grads}, rest.ema)
        finally:
            for name in self.layers:
                self.optimizer.state.pop(weights[name], None)
                self._compact(name, masks[name], weights[name])

    @torch.no_grad()
    def _compact(self, name: str, mask: torch.Tensor, weight: torch.Tensor) -> None:
        layer, optimizer = self.layers[name], self.optimizer
        pattern = mask_pattern(mask.reshape(layer.weight_shape[0], -1), self.block_size)
        carry = _carry_over(layer.pattern.positions(), pattern.positions())
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
                state_dict["state"][i] = _convert_state(optimizer, state_dict["state"][i], _scatter(layer))
        return state_dict

    def _compact_optimizer_state(self, optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in self._compact_by_id(optimizer).items():
            if i in state:
                state[i] = _convert_state(optimizer, state[i], layer.pattern.gather)
        return {**state_dict, "state": state}

    # -- back to the model's own layers -----------------------------------------------------------------

    @torch.no_grad()
    def densify(self) -> MaskedStorage:
        """Put the original modules back, with the dense weights, moments and EMA (for export and reporting)."""
        params = dict(self.rest.params)
        for name, layer in self.layers.items():
            module_name = name.rpartition(".")[0]
            module = layer.to_module(layer.values.requires_grad)
            _swap_parameter(self.optimizer, layer.values, module.weight, _scatter(layer))
            replace_module(self.model, module_name, module)
            params[name] = module.weight
            if name in self.ema_layers:
                replace_module(self.ema.module, module_name, self.ema_layers[name].to_module(False))
        for hook in self._hooks:
            hook.remove()
        return MaskedStorage(params, self.optimizer, self.ema)
