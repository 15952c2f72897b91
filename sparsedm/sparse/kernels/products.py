"""A mask's pattern and the ways of computing a sparse layer's three products with its active weights.

For a layer's weight W (out x K) and its mask, fixed between updates (kernels/layers.py gives M):

    forward         Y  = W M
    input gradient  dM = Wᵀ dY               a conv folds dM back onto x (col2im)
    weight gradient dW = dY Mᵀ, only at the mask's non-zeros

Each product has several ways to be computed (kernel_plan.py's `WAYS`): `matmul` (the dense matrix product of
the weight scattered from its values), torch's CSR product (MKL on CPU, cuSPARSE on CUDA), scipy's CSR/CSC
product, for dW torch's `sampled_addmm` (the dense-dense product evaluated at the pattern's positions only), and,
for a mask of b x b tiles (sparse.block_size, blocks.py), `block`: one dense product per block-row (forward,
dW) or block-column (dx). Every row of a block-row has the same active columns, so its CSR values ARE the
dense (b, m·b) matrix of its m tiles side by side, and likewise for Wᵀ's CSR order per block-column:

    Y[rows of o]  = W_o  M[columns of o's tiles]          W_o: (b, m_o·b), a slice of the values
    dM[rows of i] = Wᵀ_i dY[rows of i's tiles]            Wᵀ_i: (b, m_i·b), a slice of the values in Wᵀ's order
    dW_o          = dY[rows of o] M[columns of o's tiles]ᵀ  the values' gradient in CSR order, slice by slice

For a Linear, M = xᵀ and dY are transposes of contiguous (tokens x features) matrices: the block way then runs
on those, gathering whole b-wide column runs per token, and gives its result in the same layout, so neither
input nor output is transposed in memory; a conv's im2col M is made contiguous once. None wins everywhere:
compact_choice.py times them per layer. Outputs and gradients equal the dense masked path's to fp32 rounding
(sums in another order).
"""

import warnings
from functools import cached_property
from typing import List, Tuple

import numpy as np
import scipy.sparse
import torch

from sparsedm.errors import UserError
from sparsedm.sparse.blocks import BlockGrid


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
    costs memory in proportion to the non-zeros and to what its plan needs. `block_size` b > 1: the mask is made
    of b x b tiles (the engine's sparse.block_size), which the `block` way computes on."""

    def __init__(self, mask: torch.Tensor, block_size: int = 1):
        if mask.dim() != 2:
            raise UserError(f"a mask pattern is 2-D (out x K), got shape {list(mask.shape)}")
        self.shape = tuple(mask.shape)
        mask = mask.detach().to(torch.bool)
        if block_size > 1 and not BlockGrid(self.shape, block_size).is_tiled(mask):
            raise UserError(
                f"a mask pattern of block size {block_size} must be whole {block_size} x {block_size} tiles"
            )
        self.block_size = block_size
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
    def _block_rows(self) -> List[Tuple[int, int, int, torch.Tensor]]:
        """(block-row o, start and end of its values in CSR order, the columns of its tiles) per block-row with
        tiles: the columns of the block-row's first row, which every row of it shares."""
        return _blocks(self.crow, self.col, self.shape[0], self.block_size)

    @cached_property
    def _block_columns(self) -> List[Tuple[int, int, int, torch.Tensor]]:
        """The same per block-column of W, in Wᵀ's CSR order: (i, start, end, the rows of W of its tiles)."""
        crow_t, col_t, _ = self._transpose
        return _blocks(crow_t, col_t, self.shape[1], self.block_size)

    def _block_product(self, values: torch.Tensor, dense: torch.Tensor, parts, rows: int) -> torch.Tensor:
        """(rows x N): per part, its (b, m·b) values times the rows of `dense` (K x N) its tiles cover. Where
        `dense` is the transpose of a contiguous matrix (a Linear's M = xᵀ and its dY) this runs on that matrix,
        token by token, and returns the transpose of a contiguous result, so that nothing is transposed in memory."""
        b = self.block_size
        # block-rows without tiles must be zero: one pass over `out` (cheaper than zeroing strided slices)
        new = torch.Tensor.new_zeros if len(parts) < rows // b else torch.Tensor.new_empty
        if dense.t().is_contiguous():
            tokens = dense.t()
            out = new(tokens, (tokens.shape[0], rows))
            for o, start, end, index in parts:
                w = values[start:end].view(b, -1)
                torch.mm(tokens.index_select(1, index), w.t(), out=out[:, o * b : (o + 1) * b])
            return out.t()
        dense = dense.contiguous()
        out = new(dense, (rows, dense.shape[1]))
        for o, start, end, index in parts:
            torch.mm(values[start:end].view(b, -1), dense.index_select(0, index), out=out[o * b : (o + 1) * b])
        return out

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
        for blocks in ("_block_rows", "_block_columns"):
            held += [index for *_, index in self.__dict__.get(blocks, ())]
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
        return weight @ m if how == "matmul" else self.forward_values(self.gather(weight), m, how)

    def forward_values(self, values: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        if how == "matmul":
            return self.scatter(values) @ m
        if how == "torch":
            return self.csr(values) @ m
        if how == "block":
            return self._block_product(values, m, self._block_rows, self.shape[0])
        return torch.from_numpy(self.scipy(values) @ m.numpy())

    def input_grad(self, weight: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        """dM = Wᵀ dY (K x N)."""
        return weight.t() @ dy if how == "matmul" else self.input_grad_values(self.gather(weight), dy, how)

    def input_grad_values(self, values: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        if how == "matmul":
            return self.scatter(values).t() @ dy
        if how == "torch":
            return self.csr_t(values) @ dy
        if how == "block":
            return self._block_product(values[self._transpose[2]], dy, self._block_columns, self.shape[1])
        return torch.from_numpy(self.scipy(values).T @ dy.numpy())  # CSC: no transposed copy

    def weight_grad_values(self, dy: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        """(dY Mᵀ) at the active positions, in CSR order (nnz values)."""
        if how == "matmul":
            return (dy @ m.t()).reshape(-1)[self.index]
        if how == "block":
            b, grad = self.block_size, dy.new_empty(self.nnz)
            if dy.t().is_contiguous() and m.t().is_contiguous():  # a Linear's: token by token, as _block_product
                dy_tokens, m_tokens = dy.t(), m.t()
                for o, start, end, cols in self._block_rows:
                    out = grad[start:end].view(b, -1)
                    torch.mm(dy_tokens[:, o * b : (o + 1) * b].t(), m_tokens.index_select(1, cols), out=out)
                return grad
            dy, m = dy.contiguous(), m.contiguous()
            for o, start, end, cols in self._block_rows:
                torch.mm(dy[o * b : (o + 1) * b], m.index_select(0, cols).t(), out=grad[start:end].view(b, -1))
            return grad
        sampler = self._sampler.to(dtype=dy.dtype, device=dy.device)
        return torch.sparse.sampled_addmm(sampler, dy, m.t(), beta=0.0).values()

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense (out x K) tensor with `values` at the active positions and zeros elsewhere (differentiable:
        the gradient of `values` is the dense gradient gathered at the active positions)."""
        dense = values.new_zeros(self.shape[0] * self.shape[1])
        return dense.index_put((self.index,), values).view(self.shape)


def _blocks(crow: torch.Tensor, col: torch.Tensor, rows: int, b: int) -> List[Tuple[int, int, int, torch.Tensor]]:
    """Per block-row with tiles of a tile-structured CSR matrix: (its index, start and end of its values, the
    columns of its first row)."""
    starts = crow.tolist()
    parts = []
    for o in range(rows // b):
        start, end, first_end = starts[o * b], starts[(o + 1) * b], starts[o * b + 1]
        if end > start:
            parts.append((o, start, end, col[start:first_end].long()))
    return parts
