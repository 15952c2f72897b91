"""Compact layers: a masked Linear / Conv1d / Conv2d that keeps only its active weights.

A CompactLinear / CompactConv holds `values` (a Parameter of its non-zeros, in the CSR order of its mask's
pattern: products.py's MaskPattern, or block_pattern.py's BlockPattern for b x b tiles) and the original `bias`.
Its product runs by its LayerPlan (kernel_plan.py): a way per product
(products.py: sparse forward, input gradient through the transposed sparse weight, weight gradient only at
active positions), or its module's own operation on the weight scattered for that call (`module-op`).

While `sink` is set (RigL's window) the backward also hands the full weight gradient dL/dW to it. State
dicts hold the dense `weight` (hooks), so files keep the masked format. Compact storage
(storage/compact.py) builds these layers and gives them new patterns after a mask update.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernel_plan import LayerPlan
from sparsedm.sparse.kernels.block_pattern import mask_pattern
from sparsedm.sparse.kernels.layers import ConvProduct, LinearProduct
from sparsedm.sparse.kernels.products import MaskPattern


class _CompactProduct(torch.autograd.Function):
    """Y = W M from W's active values; their gradient only at active positions (or, with a sink, the full
    weight gradient handed to the sink and gathered)."""

    @staticmethod
    def forward(ctx, values, m, pattern: MaskPattern, ways, sink):
        ctx.pattern, ctx.ways, ctx.sink = pattern, ways, sink
        ctx.save_for_backward(values, m)
        return pattern.forward_values(values.detach(), m.detach(), ways[0])

    @staticmethod
    def backward(ctx, dy):
        values, m = ctx.saved_tensors
        pattern, ways = ctx.pattern, ctx.ways
        dm = pattern.input_grad_values(values, dy, ways[1]) if ctx.needs_input_grad[1] else None
        dv = None
        if ctx.needs_input_grad[0]:
            if ctx.sink is None:
                dv = pattern.weight_grad_values(dy, m, ways[2])
            else:
                full = dy @ m.t()
                ctx.sink(full)
                dv = pattern.gather(full)
        return dv, dm, None, None, None


class _Compact:
    """What CompactLinear and CompactConv share: the values, the pattern, the plan, state-dict hooks."""

    def _store(self, module: nn.Module, mask: torch.Tensor, plan: LayerPlan, block_size: int) -> None:
        weight = module.weight
        self.plan = plan
        self.weight_shape = tuple(weight.shape)
        self.pattern = mask_pattern(mask.reshape(weight.shape[0], -1), block_size)
        self.values = nn.Parameter(self.pattern.gather(weight.detach()).clone(), requires_grad=weight.requires_grad)
        self.bias = module.bias
        self.sink: Optional[Callable[[torch.Tensor], None]] = None
        self.dense_module = [module]  # given back by `to_module`; its weight is dropped (a list: not a submodule)
        module.weight = nn.Parameter(weight.new_empty(0), requires_grad=weight.requires_grad)
        self._register_state_dict_hook(_dense_weight_in_state_dict)
        self._register_load_state_dict_pre_hook(_values_from_dense_weight, with_module=True)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros at masked positions), made for this call: costs a dense tensor."""
        return self.pattern.scatter(self.values).view(self.weight_shape)

    def product(self, m: torch.Tensor) -> torch.Tensor:
        return _CompactProduct.apply(self.values, m, self.pattern, self.plan.ways, self.sink)

    def weight_for_module_op(self) -> torch.Tensor:
        w = self.weight
        if self.sink is not None and w.requires_grad:
            out = self.weight_shape[0]
            w.register_hook(lambda grad: self.sink(grad.reshape(out, -1)))
        return w

    def to_module(self, requires_grad: bool) -> nn.Module:
        """The original module again, with this layer's dense weight (a new Parameter) and bias."""
        module = self.dense_module[0]
        module.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=requires_grad)
        module.bias = self.bias
        return module


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


class CompactLinear(_Compact, LinearProduct):
    def __init__(self, module: nn.Linear, mask: torch.Tensor, plan: LayerPlan, block_size: int = 1):
        nn.Module.__init__(self)
        self._store(module, mask, plan, block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.module_op:
            return F.linear(x, self.weight_for_module_op(), self.bias)
        return LinearProduct.forward(self, x)


class CompactConv(_Compact, ConvProduct):
    def __init__(self, conv: nn.Module, mask: torch.Tensor, plan: LayerPlan, block_size: int = 1):
        nn.Module.__init__(self)
        self._store(conv, mask, plan, block_size)
        self.set_geometry(conv)
        self._module_op = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d
        self._module_args = (conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.module_op:
            return self._module_op(x, self.weight_for_module_op(), self.bias, *self._module_args)
        return ConvProduct.forward(self, x)


def compact_layer(module: nn.Module, mask: torch.Tensor, plan: LayerPlan, block_size: int = 1) -> nn.Module:
    """The compact layer of `module` at `mask` (of b x b tiles when `block_size` b > 1: sparse.block_size)."""
    if isinstance(module, nn.Linear):
        return CompactLinear(module, mask, plan, block_size)
    return CompactConv(module, mask, plan, block_size)
