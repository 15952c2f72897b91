"""The drop part: a score per entry; the k active entries of lowest score are dropped.

    DropScore(state: TensorState) -> tensor shaped like the weight

- magnitude (every dynamic method here): |W|, so the k active weights of smallest magnitude go.
"""

from typing import Callable

import torch

from sparsedm.sparse.tensor_state import Read, TensorState, reads

DropScore = Callable[[TensorState], torch.Tensor]


@reads(Read.WEIGHT)
def magnitude(state: TensorState) -> torch.Tensor:
    return state.weight.detach().abs()


def drop_lowest(score: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k active entries of lowest score."""
    score = score.flatten().masked_fill(~mask.flatten(), float("inf"))
    return torch.topk(score, k, largest=False, sorted=False).indices


def drop_by_magnitude(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k active entries with the smallest magnitude."""
    return drop_lowest(weight.detach().abs(), mask, k)
