"""A mask's pattern and the ways of computing a sparse layer's three products with its active weights.

For a layer's weight W (out x K) and its mask, fixed between updates (kernels/layers.py gives M):

    forward         Y  = W M
    input gradient  dM = Wᵀ dY               a conv folds dM back onto x (col2im)
    weight gradient dW = dY Mᵀ, only at the mask's non-zeros

Each product has several ways to be computed (kernel_plan.py's `WAYS`): `matmul` (the dense matrix product of
the weight scattered from its values), torch's CSR product (MKL on CPU, cuSPARSE on CUDA), scipy's CSR/CSC
product, for dW torch's `sampled_addmm` (the dense-dense product evaluated at the pattern's positions only), and,
for a mask of b x b tiles (sparse.block_size), `block`: block_pattern.py's BlockPattern, which holds the
pattern per tile. None wins everywhere: compact_choice.py times them per layer. Outputs and gradients equal the
dense masked path's to fp32 rounding (sums in another order).
"""

import warnings
from functools import cached_property

import numpy as np
import scipy.sparse
import torch

from sparsedm.errors import UserError


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size)


class MaskPattern:
    """The non-zeros of a 2-D mask (out x K) in CSR order, and in the order of its transpose's CSR.

    `index`: flat positions in W of the active weights, row-major (CSR of W): a layer that stores only its
    active values (compact_layers.py) keeps them in this order. The products take those values (`*_values`) or the
    dense weight W (zeros at masked positions), gathering what they need. What only some plans use (the
    transpose's order, scipy's indices, the sampler of `sampled_addmm`) is built on first use, so a pattern
    costs memory in proportion to the non-zeros and to what its plan needs. A mask of b x b tiles
    (sparse.block_size) takes block_pattern.py's BlockPattern instead."""

    block_size = 1  # no tiles: the `block` way is BlockPattern's

    def __init__(self, mask: torch.Tensor):
        self.shape = mask_shape(mask)
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
        return [self.index, self.crow, self.col] + self._built_tensors()

    def _built_tensors(self):
        """The tensors of what was built on first use."""
        held = []
        if "_transpose" in self.__dict__:
            held += list(self._transpose)
        if "_sampler" in self.__dict__:
            held += [self._sampler.crow_indices(), self._sampler.col_indices(), self._sampler.values()]
        if "_scipy_indices" in self.__dict__:
            held += [torch.from_numpy(a) for a in self._scipy_indices]  # shares self.col / self.crow when int32
        return held

    def positions(self) -> torch.Tensor:
        """Flat positions in W of the active weights, in CSR order (sorted)."""
        return self.index

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
        return weight @ m if how == "matmul" else self.forward_values(self.gather(weight), m, how)

    def forward_values(self, values: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        if how == "matmul":
            return self.scatter(values) @ m
        if how == "torch":
            return self.csr(values) @ m
        return torch.from_numpy(self.scipy(values) @ m.numpy())

    def input_grad(self, weight: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        """dM = Wᵀ dY (K x N)."""
        return weight.t() @ dy if how == "matmul" else self.input_grad_values(self.gather(weight), dy, how)

    def input_grad_values(self, values: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        if how == "matmul":
            return self.scatter(values).t() @ dy
        if how == "torch":
            return self.csr_t(values) @ dy
        return torch.from_numpy(self.scipy(values).T @ dy.numpy())  # CSC: no transposed copy

    def weight_grad_values(self, dy: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        """(dY Mᵀ) at the active positions, in CSR order (nnz values)."""
        if how == "matmul":
            return self.gather(dy @ m.t())
        sampler = self._sampler.to(dtype=dy.dtype, device=dy.device)
        return torch.sparse.sampled_addmm(sampler, dy, m.t(), beta=0.0).values()

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense (out x K) tensor with `values` at the active positions and zeros elsewhere (differentiable:
        the gradient of `values` is the dense gradient gathered at the active positions)."""
        dense = values.new_zeros(self.shape[0] * self.shape[1])
        return dense.index_put((self.index,), values).view(self.shape)


def mask_shape(mask: torch.Tensor) -> tuple:
    """The (out, K) shape of a pattern's mask, which is 2-D."""
    if mask.dim() != 2:
        raise UserError(f"a mask pattern is 2-D (out x K), got shape {list(mask.shape)}")
    return tuple(mask.shape)
