"""Masks: one boolean tensor per sparse weight, True where the weight is active.

Masks are applied with `masked_fill` (a `where`), never by multiplication, so a NaN or Inf at a masked
position becomes an exact zero instead of propagating.
"""

import hashlib
from typing import Dict

import torch


def random_mask(shape, n_active: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A mask with exactly `n_active` True entries at uniformly random positions."""
    numel = torch.Size(shape).numel()
    order = torch.randperm(numel, generator=generator)
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[order[:n_active]] = True
    return flat.view(shape).to(device)


@torch.no_grad()
def apply_masks_(tensors: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> None:
    """Zero every masked entry, in place, for each named tensor that has a mask."""
    for name, mask in masks.items():
        tensors[name].masked_fill_(~mask, 0)


def masks_fingerprint(masks: Dict[str, torch.Tensor]) -> str:
    """A sha256 over the masks in name order: equal on two ranks iff the topologies are equal."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
