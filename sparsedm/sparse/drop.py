"""The drop part: a score per entry; the k active entries of lowest score are dropped.

    DropScore(state: TensorState) -> tensor shaped like the weight

- magnitude (RigL, MagRan/SET, SNFS, GraNet): |W|, so the k active weights of smallest magnitude go.
- magnitude_and_gradient, MEST (Yuan et al. 2021, "MEST: Accurate and Fast Memory-Economic Sparse Training
  Framework on the Edge"): |W| + λ |dL/dW|, with the gradient of the update step at the active weights (the
  masked gradient, which both storages hold), so a small weight that still moves is kept. λ = MEST_LAMBDA is
  this implementation's choice, not a value tuned here.
"""

from typing import Callable

import torch

from sparsedm.sparse.tensor_state import Read, TensorState, reads

DropScore = Callable[[TensorState], torch.Tensor]
MEST_LAMBDA = 1.0  # λ of MEST's drop score: how much |gradient| counts against |weight|


@reads(Read.WEIGHT)
def magnitude(state: TensorState) -> torch.Tensor:
    return state.weight.detach().abs()


@reads(Read.WEIGHT, Read.GRAD)
def magnitude_and_gradient(state: TensorState) -> torch.Tensor:
    return state.weight.detach().abs() + MEST_LAMBDA * state.grad.detach().abs()


def drop_lowest(score: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k active entries of lowest score."""
    score = score.flatten().masked_fill(~mask.flatten(), float("inf"))
    return torch.topk(score, k, largest=False, sorted=False).indices


def drop_by_magnitude(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k active entries with the smallest magnitude."""
    return drop_lowest(weight.detach().abs(), mask, k)
