"""The pattern of a mask of b x b tiles (sparse.block_size b > 1), held per tile, and the `block` way.

A BlockPattern holds per block-row o its tiles' columns (`tile_col`, sliced by `tile_crow`): b² elements per
tile, so its indices take 1/b² of a per-element pattern's. Every row of a block-row has the same active columns,
so the block-row's CSR values ARE the dense (b, m_o·b) matrix W_o of its m_o tiles side by side, and the `block`
way is one dense product per block-row (forward, dW) or block-column (dx):

    Y[rows of o]  = W_o  M[columns of o's tiles]            W_o: (b, m_o·b), a view of the values
    dM[rows of i] = Wᵀ_i dY[rows of i's tiles]              Wᵀ_i: (b, m_i·b), its tiles' (b, b) blocks transposed
    dW_o          = dY[rows of o] M[columns of o's tiles]ᵀ  the values' gradient in CSR order, slice by slice

Wᵀ_i is assembled from the (b, b) tiles of the W_o (columns k·b:(k+1)·b of W_o for o's k-th tile) in Wᵀ's tile
order, a permutation of tiles, not of elements. For a Linear, M = xᵀ and dY are transposes of contiguous
(tokens x features) matrices: the block way then runs on those, gathering whole b-wide column runs per token,
and gives its result in the same layout, so neither input nor output is transposed in memory; a conv's im2col M
is made contiguous once. The other ways (products.py's MaskPattern) need per-element arrays (CSR `index`,
`crow`, `col`): those are built on first use and kept, so a layer measured onto them pays for them, one on the
block way only does not. The values stay in CSR order (checkpoints and compact storage's moments rely on it).
"""

from functools import cached_property
from typing import List, Tuple

import torch

from sparsedm.errors import UserError
from sparsedm.sparse.blocks import BlockGrid
from sparsedm.sparse.kernels.products import MaskPattern, mask_shape

# per block-row with tiles: (its index, start and end of its values in CSR order, its tiles' columns)
Parts = List[Tuple[int, int, int, torch.Tensor]]


class BlockPattern(MaskPattern):
    """The non-zeros of a 2-D mask (out x K) made of b x b tiles, held per tile; the values in CSR order."""

    def __init__(self, mask: torch.Tensor, block_size: int):
        self.shape = mask_shape(mask)
        grid = BlockGrid(self.shape, block_size)
        mask = mask.detach().to(torch.bool)
        if any(d % block_size for d in self.shape) or not grid.is_tiled(mask):
            raise UserError(
                f"a mask pattern of block size {block_size} must be whole {block_size} x {block_size} tiles"
            )
        self.block_size = block_size
        tiles = grid.pool_mask(mask)
        # int32, as MaskPattern's indices: index_select and indexing take them
        self.tile_col = tiles.nonzero()[:, 1].to(torch.int32)
        self.tile_crow = torch.cat([tiles.new_zeros(1, dtype=torch.long), tiles.sum(1).cumsum(0)]).to(torch.int32)
        self.nnz = int(self.tile_col.numel()) * block_size * block_size

    # -- per-element arrays, for the other ways: built on first use ---------------------------------------

    @cached_property
    def _elements(self) -> MaskPattern:
        return MaskPattern(self._mask())

    @property
    def index(self) -> torch.Tensor:
        return self._elements.index

    @property
    def crow(self) -> torch.Tensor:
        return self._elements.crow

    @property
    def col(self) -> torch.Tensor:
        return self._elements.col

    def _mask(self) -> torch.Tensor:
        b, (rows, cols) = self.block_size, self.shape
        tiles = torch.zeros(rows // b, cols // b, dtype=torch.bool, device=self.tile_col.device)
        tiles[self._tile_row, self.tile_col] = True
        return BlockGrid(self.shape, b).expand_mask(tiles)

    def positions(self) -> torch.Tensor:
        """Flat positions in W of the active weights, in CSR order; made for this call unless already held."""
        return self.index if "_elements" in self.__dict__ else self._mask().reshape(-1).nonzero().squeeze(1)

    def tensors(self):
        """Every tensor the pattern holds now (for counting its bytes)."""
        held = [self.tile_col, self.tile_crow] + self._built_tensors()
        if "_elements" in self.__dict__:
            held += self._elements.tensors()
        if "_transpose_tiles" in self.__dict__:
            held += list(self._transpose_tiles)
        if "_tile_row" in self.__dict__:
            held.append(self._tile_row)
        return held

    # -- per tile -----------------------------------------------------------------------------------------

    @cached_property
    def _tile_row(self) -> torch.Tensor:
        """The block-row of each tile (one int per tile, kept: module-op plans gather and scatter every call)."""
        crow = self.tile_crow
        return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff()).to(torch.int32)

    @cached_property
    def _transpose_tiles(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tile_crow, tile_col) of Wᵀ's tiles, and `order`: the positions of W's tiles in Wᵀ's tile order."""
        rows_of = self._tile_row
        order = torch.argsort(self.tile_col.long() * (self.shape[0] // self.block_size) + rows_of)
        counts = torch.bincount(self.tile_col, minlength=self.shape[1] // self.block_size)
        tile_crow_t = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return tile_crow_t.to(torch.int32), rows_of[order].to(torch.int32), order.to(torch.int32)

    @cached_property
    def _block_rows(self) -> Parts:
        return _parts(self.tile_crow, self.tile_col, self.block_size)

    @cached_property
    def _block_columns(self) -> Parts:
        """The same per block-column of W (a block-row of Wᵀ), in Wᵀ's CSR order."""
        tile_crow_t, tile_col_t, _ = self._transpose_tiles
        return _parts(tile_crow_t, tile_col_t, self.block_size)

    def _tiles(self, values: torch.Tensor) -> torch.Tensor:
        """(tiles, b, b): the CSR-ordered values as tiles, in W's tile order (block-rows, then columns)."""
        b = self.block_size
        if not self._block_rows:
            return values.new_zeros(0, b, b)
        return torch.cat([values[start:end].view(b, -1, b).transpose(0, 1) for _, start, end, _ in self._block_rows])

    def _values(self, tiles: torch.Tensor) -> torch.Tensor:
        """The CSR-ordered values of (tiles, b, b) in W's tile order (the inverse of `_tiles`)."""
        b2 = self.block_size**2
        if not self._block_rows:
            return tiles.new_zeros(0)
        return torch.cat([tiles[s // b2 : e // b2].transpose(0, 1).reshape(-1) for _, s, e, _ in self._block_rows])

    def _grid(self, dense: torch.Tensor) -> torch.Tensor:
        """(block-rows, b, block-columns, b): a view of a dense (out x K) tensor."""
        b, (rows, cols) = self.block_size, self.shape
        return dense.reshape(rows // b, b, cols // b, b)

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The active values of a dense weight, in CSR order."""
        return self._values(self._grid(weight)[self._tile_row, :, self.tile_col])

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense (out x K) tensor with `values` at the active positions and zeros elsewhere (differentiable:
        the gradient of `values` is the dense gradient gathered at the active positions)."""
        b, (rows, cols) = self.block_size, self.shape
        grid = values.new_zeros(rows // b, cols // b, b, b)  # (block-row, block-column, row, column)
        grid = grid.index_put((self._tile_row, self.tile_col), self._tiles(values))
        return grid.transpose(1, 2).reshape(self.shape)

    # -- the block way ------------------------------------------------------------------------------------

    def forward_values(self, values: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        if how != "block":
            return super().forward_values(values, m, how)
        b = self.block_size
        weights = [values[start:end].view(b, -1) for _, start, end, _ in self._block_rows]
        return self._block_product(weights, m, self._block_rows, self.shape[0])

    def input_grad_values(self, values: torch.Tensor, dy: torch.Tensor, how: str) -> torch.Tensor:
        if how != "block":
            return super().input_grad_values(values, dy, how)
        b = self.block_size
        tiles = self._tiles(values)[self._transpose_tiles[2]]  # W's tiles in Wᵀ's tile order
        # Wᵀ_i[c, k·b + r] = (k-th tile of block-column i)[r, c]
        weights = [
            tiles[s // (b * b) : e // (b * b)].permute(2, 0, 1).reshape(b, -1) for _, s, e, _ in self._block_columns
        ]
        return self._block_product(weights, dy, self._block_columns, self.shape[1])

    def weight_grad_values(self, dy: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
        if how != "block":
            return super().weight_grad_values(dy, m, how)
        b, grad = self.block_size, dy.new_empty(self.nnz)
        if dy.t().is_contiguous() and m.t().is_contiguous():  # a Linear's: token by token, as _block_product
            dy_tokens, m_tokens = dy.t(), m.t()
            for o, start, end, cols in self._block_rows:
                out = grad[start:end].view(b, -1)
                torch.mm(dy_tokens[:, o * b : (o + 1) * b].t(), _columns(m_tokens, cols, b), out=out)
            return grad
        dy, m = dy.contiguous(), m.contiguous()
        for o, start, end, cols in self._block_rows:
            torch.mm(dy[o * b : (o + 1) * b], _rows(m, cols, b).t(), out=grad[start:end].view(b, -1))
        return grad

    def _block_product(self, weights, dense: torch.Tensor, parts: Parts, rows: int) -> torch.Tensor:
        """(rows x N): per part, its (b, m·b) weight times the rows of `dense` (K x N) its tiles cover. Where
        `dense` is the transpose of a contiguous matrix (a Linear's M = xᵀ and its dY) this runs on that matrix,
        token by token, and returns the transpose of a contiguous result, so that nothing is transposed in memory."""
        b = self.block_size
        # block-rows without tiles must be zero: one pass over `out` (cheaper than zeroing strided slices)
        new = torch.Tensor.new_zeros if len(parts) < rows // b else torch.Tensor.new_empty
        if dense.t().is_contiguous():
            tokens = dense.t()
            out = new(tokens, (tokens.shape[0], rows))
            for w, (o, _, _, cols) in zip(weights, parts):
                torch.mm(_columns(tokens, cols, b), w.t(), out=out[:, o * b : (o + 1) * b])
            return out.t()
        dense = dense.contiguous()
        out = new(dense, (rows, dense.shape[1]))
        for w, (o, _, _, cols) in zip(weights, parts):
            torch.mm(w, _rows(dense, cols, b), out=out[o * b : (o + 1) * b])
        return out


def _parts(tile_crow: torch.Tensor, tile_col: torch.Tensor, b: int) -> Parts:
    """Per block-row with tiles: (its index, start and end of its values, its tiles' columns, a view)."""
    first = tile_crow.tolist()
    return [
        (o, first[o] * b * b, first[o + 1] * b * b, tile_col[first[o] : first[o + 1]])
        for o in range(len(first) - 1)
        if first[o + 1] > first[o]
    ]


def _columns(tokens: torch.Tensor, tile_cols: torch.Tensor, b: int) -> torch.Tensor:
    """(N, m·b): the b-wide column runs of contiguous `tokens` (N x K) at the tile columns."""
    return tokens.view(tokens.shape[0], -1, b).index_select(1, tile_cols).view(tokens.shape[0], -1)


def _rows(dense: torch.Tensor, tile_rows: torch.Tensor, b: int) -> torch.Tensor:
    """(m·b, N): the b-high row runs of contiguous `dense` (K x N) at the tiles' positions."""
    return dense.view(-1, b * dense.shape[1]).index_select(0, tile_rows).view(-1, dense.shape[1])


def mask_pattern(mask: torch.Tensor, block_size: int = 1) -> MaskPattern:
    """The pattern of a 2-D mask: per tile for b x b tiles (`block_size` b > 1, sparse.block_size), else per element."""
    return BlockPattern(mask, block_size) if block_size > 1 else MaskPattern(mask)
