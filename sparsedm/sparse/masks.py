"""Masks: one boolean tensor per sparse weight, True where the weight is active.

A masked position always becomes an exact zero, even where the tensor holds a NaN or an Inf: multiplying by
the mask would leave NaN * 0 = NaN there. `masked_fill` does it exactly, but on CPU its kernel branches per
element and is ~5x slower than a multiplication on a random mask. So gradients, masked every step, are
multiplied when a norm shows them finite (then the product is exact) and filled otherwise; on GPUs, where
`masked_fill` runs at memory speed, they are always filled, without the host sync a check would cost.
"""

import hashlib
from typing import Dict, List

import torch


def random_mask(shape, n_active: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A mask with exactly `n_active` True entries at uniformly random positions."""
    numel = torch.Size(shape).numel()
    order = torch.randperm(numel, generator=generator)
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[order[:n_active]] = True
    return flat.view(shape).to(device)


def all_finite(tensors: List[torch.Tensor]) -> bool:
    """True iff no tensor holds a NaN or an Inf (one cheap norm per tensor, exact check only on doubt)."""
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)  # a finite norm means finite entries; Inf can also be an overflow
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def mask_gradients_(params: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> None:
    """Zero the gradient of every masked weight, NaN-safely (see the module's docstring)."""
    names = [n for n, p in params.items() if p.grad is not None]
    if not names:
        return
    grads = [params[n].grad for n in names]
    if all(g.device.type == "cpu" for g in grads) and all_finite(grads):
        torch._foreach_mul_(grads, [masks[n] for n in names])
        return
    for name, grad in zip(names, grads):
        grad.masked_fill_(~masks[name], 0)


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
