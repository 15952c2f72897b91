"""The grow step: choose k positions among those inactive *before* this update.

- RigL-DM (Evci et al. 2020): the largest |dense gradient|, the gradient of the loss w.r.t. the full
  tensor on this update step (optionally summed over a few batches).
- MagRan-DM (SET, Mocanu et al. 2018): uniformly at random, from a generator seeded identically on every
  rank, so all ranks grow the same connections.
Because candidates are inactive and the drop step only removes active weights, the drop and grow sets are
disjoint by construction.
"""

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
