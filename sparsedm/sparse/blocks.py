"""Block-structured sparsity (`sparse.block_size` b > 1, not the paper's): masks that are unions of b x b tiles.

A tensor's tiles cover its 2-D view (shape[0], prod(shape[1:])), the (out x K) matrix its layer multiplies
with (kernels/layers.py), so a tile-structured mask gives a compact Linear dense b x b blocks to compute on
(products.py's `block` way). Masks stay element-level everywhere (storage, checkpoints, export, FLOPs): a block
mask is a valid mask. Only the topology decisions are taken on the grid of tiles: the engine pools what the
method's parts read (a score summed per tile, the mask per tile), runs the parts unchanged there, and expands
the tiles they pick to element indices. With b = 1 every tile is one element and the grid is the tensor.
"""

import math
from dataclasses import replace
from typing import Dict, Sequence, Tuple

import torch

from sparsedm.errors import UserError
from sparsedm.sparse.tensor_state import TensorState


def matrix_shape(shape: Sequence[int]) -> Tuple[int, int]:
    """The 2-D view a tensor's tiles cover: (shape[0], prod(shape[1:]))."""
    return shape[0], math.prod(shape[1:])


def check_divisible(shapes: Dict[str, Sequence[int]], block: int) -> None:
    """UserError in one line naming the sparse tensors whose 2-D view b x b tiles do not cover."""
    bad = [n for n, s in shapes.items() if any(d % block for d in matrix_shape(s))]
    if bad:
        others = f" (and {len(bad) - 1} other tensors)" if len(bad) > 1 else ""
        raise UserError(
            f"sparse.block_size={block} does not divide sparse tensor {bad[0]} of 2-D shape "
            f"{list(matrix_shape(shapes[bad[0]]))}{others}; keep it dense with sparse.exclude or choose a block "
            "size that divides both sides"
        )


class BlockGrid:
    """The b x b tiles of one tensor: pooling to the grid (tile rows x tile columns) and expanding back."""

    def __init__(self, shape: Sequence[int], block: int):
        self.shape, self.block = tuple(shape), block
        rows, cols = matrix_shape(shape)
        # the grid's shape: tile rows x tile columns, or the tensor's own shape when every tile is one element
        self.grid = self.shape if block == 1 else (rows // block, cols // block)
        self.tiles = math.prod(self.grid)

    @property
    def tile_size(self) -> int:
        """Elements per tile: b²."""
        return self.block * self.block

    def _tiled(self, tensor: torch.Tensor) -> torch.Tensor:
        """(tile rows, b, tile columns, b): a view of the tensor's 2-D view."""
        b = self.block
        return tensor.reshape(self.grid[0], b, self.grid[1], b)

    def pool(self, score: torch.Tensor) -> torch.Tensor:
        """|score| summed per tile, on the grid."""
        return score if self.block == 1 else self._tiled(score.detach().abs()).sum((1, 3))

    def pool_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask per tile on the grid (a tile-structured mask is all True or all False in a tile)."""
        return mask if self.block == 1 else self._tiled(mask).any(3).any(1)

    def pool_state(self, state: TensorState) -> TensorState:
        """What the method's parts read, on the grid: every score |.| summed per tile, the mask per tile."""
        if self.block == 1:
            return state
        pooled = {
            k: None if getattr(state, k) is None else self.pool(getattr(state, k))
            for k in ("weight", "grad", "dense_grad", "momentum")
        }
        return replace(state, mask=self.pool_mask(state.mask), **pooled)

    def expand_mask(self, tiles: torch.Tensor) -> torch.Tensor:
        """The element mask (the tensor's shape) of a mask on the grid."""
        if self.block == 1:
            return tiles
        b = self.block
        return tiles[:, None, :, None].expand(-1, b, -1, b).reshape(self.shape)

    def expand(self, tile_index: torch.Tensor) -> torch.Tensor:
        """Flat element indices of the tiles at flat grid indices `tile_index` (b² per tile)."""
        if self.block == 1:
            return tile_index
        b, cols = self.block, self.grid[1] * self.block
        offsets = torch.arange(b, device=tile_index.device)
        row = (tile_index // self.grid[1])[:, None, None] * b + offsets[None, :, None]
        col = (tile_index % self.grid[1])[:, None, None] * b + offsets[None, None, :]
        return (row * cols + col).reshape(-1)

    def is_tiled(self, mask: torch.Tensor) -> bool:
        """Whether `mask` is a union of whole tiles."""
        return self.block == 1 or bool(torch.equal(self.expand_mask(self.pool_mask(mask)), mask.to(torch.bool)))
