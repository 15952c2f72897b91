"""Sparse training kernels: forward and backward of a masked Linear / Conv1d / Conv2d with its active weights only.

    layer = sparse_train_module(conv, mask, ("torch", "scipy", "sampled"))   # a plan: (FWD, DX, DW)
    layer(x).backward(dy)                  # conv.weight.grad: dense, exactly zero where the mask is 0

Each layer is three products with its weight W (out x K), the mask fixed between updates:

    forward         Y  = W M                 M = x as (in, N) for a Linear, im2col(x) as (in·kh·kw, B·L) for a conv
    input gradient  dM = Wᵀ dY               a conv folds dM back onto x (col2im)
    weight gradient dW = dY Mᵀ, only at the mask's non-zeros

and each product has several ways to be computed (`PARTS`): dense (the masked weight, torch's BLAS), torch's
CSR product (MKL on CPU, cuSPARSE on CUDA), scipy's CSR/CSC product, and for dW torch's `sampled_addmm` (the
dense-dense product evaluated at the pattern's positions only). None wins everywhere: train_kernel_choice.py
times them per layer. For a convolution even three dense GEMMs on im2col columns (all parts "dense", the
weight gradient still gathered at the active positions only) can beat torch's convolution: on LDM-4's
896-1792-channel layers at 2 x 2 maps, whose time goes to reading the weights.

Exactness: outputs and gradients equal the dense masked path's to fp32 rounding (sums in another order);
`weight.grad` is the dense masked gradient (what the engine's `mask_gradients_` leaves), built by scattering
the active values, which `MaskPattern.backward` also returns alone for a caller that stores only those.
The layers hold the original Parameters under the same names (`weight`, `bias`), so state dicts, optimiser,
EMA and engine see no change. Only groups=1, zero-padded convolutions in fp32/fp64 (`applicable_kernels` of
`kernels.py`).
"""

import warnings
from functools import cached_property
from typing import Tuple

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernels import _conv_geometry

PARTS = {  # the ways each product can be computed; "dense" first
    "fwd": ("dense", "torch", "scipy"),
    "dx": ("dense", "torch", "scipy"),
    "dw": ("dense", "sampled"),
}
ALL_DENSE = ("dense", "dense", "dense")


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size)


class MaskPattern:
    """The non-zeros of a 2-D mask (out x K) in CSR order, and in the order of its transpose's CSR.

    `index`: flat positions in W of the active weights, row-major (CSR of W): a layer that stores only its
    active values (compact.py) keeps them in this order. The products take those values (`*_values`) or the
    dense weight W (zeros at masked positions), gathering what they need. What only some plans use (the
    transpose's order, scipy's indices, the sampler of `sampled_addmm`) is built on first use, so a pattern
    costs memory in proportion to the non-zeros and to what its plan needs."""

    def __init__(self, mask: torch.Tensor):
        if mask.dim() != 2:
            raise UserError(f"a mask pattern is 2-D (out x K), got shape {list(mask.shape)}")
        self.shape = tuple(mask.shape)
        mask = mask.detach().to(torch.bool)
        # int32 indices where they fit (torch's CSR products, gathers and scatters take them): half the bytes
        dtype = torch.int32 if mask.numel() < 2**31 else torch.int64
        index = mask.reshape(-1).nonzero().squeeze(1)
        self.index = index.to(dtype)
        self.crow = torch.cat([index.new_zeros(1), mask.sum(1).cumsum(0)]).to(dtype)
        self.col = (index % self.shape[1]).to(dtype)
        self.nnz = int(self.index.numel())

    @cached_property
    def _transpose(self):
        """(crow, col, order) of Wᵀ's CSR; `order`: the CSR values' positions in Wᵀ's CSR order."""
        rows, cols = self.shape
        dtype = self.index.dtype
        rows_of = torch.repeat_interleave(torch.arange(rows, device=self.index.device), self.crow.diff().long())
        order = torch.argsort(self.col.long() * rows + rows_of)  # column-major position of each CSR value
        counts = torch.bincount(self.col.long(), minlength=cols)
        crow_t = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return crow_t.to(dtype), rows_of[order].to(dtype), order.to(dtype)

    @cached_property
    def _scipy_indices(self):
        if self.index.dtype == torch.int32:  # scipy takes the same arrays, no copy
            return self.col.cpu().numpy(), self.crow.cpu().numpy()
        return self.col.cpu().numpy().astype(np.int64), self.crow.cpu().numpy().astype(np.int64)

    @cached_property
    def _sampler(self):
        return _csr(
            self.crow, self.col, torch.zeros(self.nnz, dtype=torch.float32, device=self.index.device), self.shape
        )

    def tensors(self):
        """Every tensor the pattern holds now (for counting its bytes)."""
        held = [self.index, self.crow, self.col]
        if "_transpose" in self.__dict__:
            held += list(self._transpose)
        if "_sampler" in self.__dict__:
            held += [self._sampler.crow_indices(), self._sampler.col_indices(), self._sampler.values()]
        if "_scipy_indices" in self.__dict__:
            held += [torch.from_numpy(a) for a in self._scipy_indices]  # shares self.col / self.crow when int32
        return held

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The active values of a dense weight, in CSR order."""
        return weight.reshape(-1)[self.index]

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.col, values, self.shape)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        crow_t, col_t, order = self._transpose
        return _csr(crow_t, col_t, values[order], self.shape[::-1])

    def scipy(self, values: torch.Tensor) -> scipy.sparse.csr_matrix:
        return scipy.sparse.csr_matrix((values.detach().numpy(), *self._scipy_indices), shape=self.shape)

    def forward(self, weight: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        """Y = W M (out x N) for a dense M (K x N)."""
        return weight @ m if how == "dense" else self.forward_values(self.gather(weight), m, how)

    def forward_values(self, values: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        if how == "dense":
            return self.scatter(values) @ m
        if how == "torch":
            return self.csr(values) @ m
        return torch.from_numpy(self.scipy(values) @ m.numpy())

    def input_grad(self, weight: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        """dM = Wᵀ dY (K x N)."""
        return weight.t() @ dy if how == "dense" else self.input_grad_values(self.gather(weight), dy, how)

    def input_grad_values(self, values: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        if how == "dense":
            return self.scatter(values).t() @ dy
        if how == "torch":
            return self.csr_t(values) @ dy
        return torch.from_numpy(self.scipy(values).T @ dy.numpy())  # CSC: no transposed copy

    def weight_grad_values(self, dy: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        """(dY Mᵀ) at the active positions, in CSR order (nnz values)."""
        if how == "dense":
            return (dy @ m.t()).reshape(-1)[self.index]
        sampler = self._sampler.to(dtype=dy.dtype, device=dy.device)
        return torch.sparse.sampled_addmm(sampler, dy, m.t(), beta=0.0).values()

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense (out x K) tensor with `values` at the active positions and zeros elsewhere (differentiable:
        the gradient of `values` is the dense gradient gathered at the active positions)."""
        dense = values.new_zeros(self.shape[0] * self.shape[1])
        return dense.index_put((self.index,), values).view(self.shape)

    def backward(self, weight, m, dy, plan: Tuple[str, str, str], need_dm: bool = True):
        """(dM or None, dW's active values) for a plan (fwd, dx, dw)."""
        dm = self.input_grad(weight, dy, plan[1]) if need_dm else None
        return dm, self.weight_grad_values(dy, m, plan[2])


class _MaskedProduct(torch.autograd.Function):
    """Y = W M with W's gradient computed only at the mask's non-zeros (returned dense, zeros elsewhere)."""

    @staticmethod
    def forward(ctx, weight, m, pattern: MaskPattern, plan):
        ctx.pattern, ctx.plan = pattern, plan
        ctx.save_for_backward(weight, m)
        return pattern.forward(weight.detach(), m.detach(), plan[0])

    @staticmethod
    def backward(ctx, dy):
        weight, m = ctx.saved_tensors
        dm, values = ctx.pattern.backward(weight, m, dy, ctx.plan, need_dm=ctx.needs_input_grad[1])
        dw = ctx.pattern.scatter(values) if ctx.needs_input_grad[0] else None
        return dw, dm, None, None


def masked_product(weight: torch.Tensor, m: torch.Tensor, pattern: MaskPattern, plan) -> torch.Tensor:
    return _MaskedProduct.apply(weight, m, pattern, tuple(plan))


class _SparseTrainLayer(nn.Module):
    """Holds the original layer's Parameters under the same names (`weight`, `bias`), so state dicts, masks and
    optimisers keyed by name or by Parameter see no change; `dense` is the original module."""

    def __init__(self, module: nn.Module, mask: torch.Tensor, plan):
        super().__init__()
        self.weight, self.bias = module.weight, module.bias
        self.weight_shape = tuple(module.weight.shape)
        self.dense_module = [module]  # a list: not a submodule, its Parameters are not listed twice
        self.plan = tuple(plan)
        self.refresh(mask)

    def refresh(self, mask: torch.Tensor) -> None:
        """A new pattern after a mask update (the mask has the weight's shape)."""
        self.pattern = MaskPattern(mask.reshape(self.weight.shape[0], -1))

    def product(self, m: torch.Tensor) -> torch.Tensor:
        """W M by the plan (W as out x K)."""
        return masked_product(self.weight.reshape(self.weight.shape[0], -1), m, self.pattern, self.plan)

    @property
    def dense(self) -> nn.Module:
        return self.dense_module[0]


class SparseTrainLinear(_SparseTrainLayer):
    """A Linear whose weight is multiplied through `plan` at `mask`'s pattern."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(-1, self.weight_shape[1]).t()  # (in, N), a view
        y = self.product(m).t()
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.weight_shape[0])


class SparseTrainConv(_SparseTrainLayer):
    """A groups=1 zero-padded Conv1d/Conv2d as W · im2col(x) with W at `mask`'s pattern (a Conv1d is 1 x k)."""

    def __init__(self, conv: nn.Module, mask: torch.Tensor, plan):
        super().__init__(conv, mask, plan)
        self._set_geometry(conv)

    def _set_geometry(self, conv: nn.Module) -> None:
        self.one_d = isinstance(conv, nn.Conv1d)
        self.kernel_size = (1,) + tuple(conv.kernel_size) if self.one_d else tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = _conv_geometry(conv)

    def _out_size(self, size: int, axis: int) -> int:
        k, p, s, d = self.kernel_size[axis], self.padding[axis], self.stride[axis], self.dilation[axis]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """im2col(x) as (in·kh·kw, B·L)."""
        x4 = x[:, :, None] if self.one_d else x
        cols = F.unfold(x4, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width = x.shape[0], 1 if self.one_d else x.shape[2], x.shape[-1]
        # autograd folds dM back onto x through unfold's backward (col2im)
        y = self.product(self.columns(x))
        y = y.view(-1, batch, self._out_size(height, 0), self._out_size(width, 1)).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        y = y.contiguous()
        return y[:, :, 0] if self.one_d else y


def sparse_train_module(module: nn.Module, mask: torch.Tensor, plan) -> nn.Module:
    if isinstance(module, nn.Linear):
        return SparseTrainLinear(module, mask, plan)
    return SparseTrainConv(module, mask, plan)
