"""The grow step: choose k positions among the candidates, the entries that `mask` marks inactive.

- RigL-DM (Evci et al. 2020): the largest |dense gradient|, the gradient of the loss w.r.t. the full
  tensor on this update step (optionally summed over a few batches).
- MagRan-DM (SET, Mocanu et al. 2018): uniformly at random, from a generator seeded identically on every
  rank, so all ranks grow the same connections.
By default the engine passes the mask from before the update, so candidates were inactive, the drop step
only removes active weights, and the drop and grow sets are disjoint by construction. With
`sparse.regrow_dropped` it passes the mask after the drop (google-research/rigl's `_get_update_op`), so a
just-dropped weight is a candidate again; the engine then counts it as unchanged."""

import torch


def grow_by_gradient(dense_grad: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k inactive entries with the largest |gradient|."""
    score = dense_grad.detach().abs().flatten().float().masked_fill(mask.flatten(), -1.0)
    return torch.topk(score, k, largest=True, sorted=False).indices


def grow_random(mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Flat indices of k inactive entries drawn uniformly at random (CPU generator: same on every device)."""
    inactive = (~mask.flatten()).nonzero().squeeze(1)
    pick = torch.randperm(inactive.numel(), generator=generator)[:k]
    return inactive[pick.to(inactive.device)]
