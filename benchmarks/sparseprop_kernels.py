"""IST-DASLab's sparseprop kernels (optional: `pip install sparseprop==0.1.14`) as sparse training layers, for
benchmarks/sparse_training.py (no command trains with them: their layers read a dense weight).

sparseprop computes a sparse Conv2d / Linear forward and backward directly (no im2col), in C++ with AVX2,
vectorised over the batch (`batch`) or over output positions (`outputs`, Conv2d only). It is the only kernel
measured here that beats torch's dense convolution on narrow layers with large maps (benchmarks/
sparse_training.py, docs/performance.md), but as published it has limits this adapter works around:

- it takes its pattern from the weight's non-zeros, so an active weight that is exactly zero (every weight
  RigL grows starts at zero) would get no gradient: here the pattern comes from the mask (each active
  position's flat index is passed through sparseprop's own conversion to learn its order);
- it reads its inputs' memory as if contiguous: inputs and output gradients are made contiguous here;
- the `batch` Conv2d kernels give wrong outputs for batches that are not a multiple of 8 (AVX2's width) and
  their backward then writes out of bounds (a segmentation fault, seen on LDM-4's shapes at batch 4): that
  variant is offered only for such batches, and a layer that meets another batch size computes densely
  (`F.conv2d` with the masked weight, the same numbers);
- other set-ups give wrong numbers (the `outputs` Conv2d backward with stride 2, measured on torch 2.13,
  AVX2): `agrees` checks a layer against the dense masked path on its real input, and the measurement
  (training_kernels.measure_plan) only takes a variant where it agrees.

Only square kernels with equal stride (1 or 2) and padding on both axes, dilation 1, groups 1, fp32.
"""

from typing import Dict

import torch
from torch import nn

from sparsedm.sparse.kernels.layers import conv_geometry

try:
    from sparseprop.modules.functions import SparseConvFunction, SparseLinearFunction
    from sparseprop.modules.utils import to_sparse_format_conv2d

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

VARIANTS = ("batch", "outputs")


BATCH_MULTIPLE = 8  # the `batch` Conv2d kernels need a batch that is a multiple of this


def variants(module: nn.Module, batch: int = BATCH_MULTIPLE):
    """The sparseprop variants that fit `module` on inputs of `batch` samples (none without sparseprop)."""
    if not AVAILABLE or module.weight.dtype != torch.float32 or module.weight.device.type != "cpu":
        return []
    if isinstance(module, nn.Linear):
        return ["batch"]
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding_mode != "zeros":
        return []
    stride, padding, dilation = conv_geometry(module)
    square = module.kernel_size[0] == module.kernel_size[1] and padding[0] == padding[1] and stride[0] == stride[1]
    if not square or set(dilation) != {1} or stride[0] not in (1, 2):
        return []
    return [v for v in VARIANTS if v != "batch" or batch % BATCH_MULTIPLE == 0]


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class SparsepropLayer(nn.Module):
    """A Linear or Conv2d computed by sparseprop at `mask`'s pattern; `weight` and `bias` are the original
    Parameters (same names), `weight.grad` the dense masked gradient."""

    def __init__(self, module: nn.Module, mask: torch.Tensor, variant: str = "batch"):
        super().__init__()
        self.weight, self.bias = module.weight, module.bias
        self.dense_module = [module]
        self.linear, self.variant = isinstance(module, nn.Linear), variant
        self.dense_conv = None if self.linear else module._conv_forward  # F.conv2d with the module's geometry
        if not self.linear:
            stride, padding, _ = conv_geometry(module)
            self.stride, self.padding = stride[0], padding[0]
        self.refresh(mask)

    def refresh(self, mask: torch.Tensor) -> None:
        mask = mask.to(torch.bool).reshape(self.weight.shape)
        self.mask = mask
        if self.linear:
            flat = mask.reshape(-1)
            self.index = flat.nonzero().squeeze(1)
            self.w_idx = (
                torch.cat([flat.new_zeros(1, dtype=torch.int64), mask.sum(1).cumsum(0)]).int(),
                (self.index % mask.shape[1]).int(),
            )
        else:
            if mask.numel() >= 2**24:
                raise ValueError("sparseprop positions are passed as fp32: at most 2^24 weights")
            ids = torch.zeros(mask.numel())
            ids[mask.reshape(-1)] = torch.arange(1, int(mask.sum()) + 1, dtype=torch.float32)
            order, self.w_idx = to_sparse_format_conv2d(ids.view(mask.shape))
            self.index = mask.reshape(-1).nonzero().squeeze(1)[order.long() - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linear and self.variant == "batch" and x.shape[0] % BATCH_MULTIPLE:
            return self.dense_conv(x, self.weight * self.mask, self.bias)  # see the module's docstring
        values = self.weight.reshape(-1)[self.index]  # autograd scatters dW back: the dense masked gradient
        x = x.contiguous()
        if self.linear:
            y = SparseLinearFunction.apply(x, values, self.w_idx, self.bias, self.weight.shape[0])
        else:
            over_outputs = self.variant == "outputs"
            y = SparseConvFunction.apply(
                x,
                values,
                self.w_idx,
                self.bias,
                self.weight.shape[0],
                self.weight.shape[2],
                self.padding,
                self.stride,
                over_outputs and self.stride == 1,  # its forward over outputs has stride 1 only
                over_outputs,
            )
        return _ContiguousGrad.apply(y)


def agrees(layer: nn.Module, module: nn.Module, mask: torch.Tensor, x: torch.Tensor, dy: torch.Tensor) -> bool:
    """Does `layer` give the dense masked module's output, input gradient and masked weight gradient on x, dy
    (to 1e-4 of each one's largest entry)?"""
    got, want = _run(layer, x, dy), _run(module, x, dy)
    want["weight"] = want["weight"] * mask
    return all(bool((got[k] - want[k]).abs().max() <= 1e-4 * want[k].abs().max().clamp_min(1e-6)) for k in want)


def _run(module, x, dy) -> Dict[str, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    weight = module.weight
    saved, weight.grad = weight.grad, None
    y = module(x)
    y.backward(dy)
    out = {"y": y.detach(), "x": x.grad, "weight": weight.grad}
    weight.grad = saved
    if module.bias is not None:
        module.bias.grad = None
    return out
