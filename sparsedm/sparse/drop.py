"""The drop step, shared by RigL-DM and MagRan-DM: remove the k active weights of smallest |W|."""

import torch


def drop_by_magnitude(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k active entries with the smallest magnitude."""
    score = weight.detach().abs().flatten().masked_fill(~mask.flatten(), float("inf"))
    return torch.topk(score, k, largest=False, sorted=False).indices
