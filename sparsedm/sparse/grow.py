"""The grow part: choose k positions among the candidates, the entries that `candidates` marks inactive.

    GrowRule(candidates, k, state: TensorState) -> flat indices of k candidates

- by_gradient, RigL-DM (Evci et al. 2020): the largest |dense gradient|, the gradient of the loss w.r.t. the
  full tensor on this update step (optionally summed over a few batches).
- at_random, MagRan-DM (SET, Mocanu et al. 2018): uniformly at random, from a generator seeded identically on
  every rank, so all ranks grow the same connections.
- by_momentum, SNFS (Dettmers & Zettlemoyer 2019): the largest |momentum| of the optimiser (Adam's exp_avg),
  which the method keeps dense by letting the optimiser see the dense gradient.
By default the engine passes the mask from before the update, so candidates were inactive, the drop step
only removes active weights, and the drop and grow sets are disjoint by construction. With
`sparse.regrow_dropped` it passes the mask after the drop (google-research/rigl's `_get_update_op`), so a
just-dropped weight is a candidate again; the engine then counts it as unchanged."""

from typing import Callable

import torch

from sparsedm.sparse.tensor_state import Read, TensorState, reads

GrowRule = Callable[[torch.Tensor, int, TensorState], torch.Tensor]


def grow_highest(score: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k candidate (inactive) entries with the largest score (scores must be >= 0)."""
    score = score.detach().flatten().float().masked_fill(candidates.flatten(), -1.0)
    return torch.topk(score, k, largest=True, sorted=False).indices


def grow_by_gradient(dense_grad: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k inactive entries with the largest |gradient|."""
    return grow_highest(dense_grad.abs(), mask, k)


def grow_random(mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Flat indices of k inactive entries drawn uniformly at random (CPU generator: same on every device)."""
    inactive = (~mask.flatten()).nonzero().squeeze(1)
    pick = torch.randperm(inactive.numel(), generator=generator)[:k]
    return inactive[pick.to(inactive.device)]


@reads(Read.DENSE_GRAD)
def by_gradient(candidates: torch.Tensor, k: int, state: TensorState) -> torch.Tensor:
    return grow_by_gradient(state.dense_grad, candidates, k)


@reads()
def at_random(candidates: torch.Tensor, k: int, state: TensorState) -> torch.Tensor:
    return grow_random(candidates, k, state.generator)


@reads(Read.DENSE_MOMENTUM)
def by_momentum(candidates: torch.Tensor, k: int, state: TensorState) -> torch.Tensor:
    momentum = state.momentum if state.momentum is not None else torch.zeros(state.mask.shape, device=state.mask.device)
    return grow_highest(momentum.abs(), candidates, k)
