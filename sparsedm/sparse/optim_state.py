"""Optimiser-state surgery: zero the moments of weights whose connection was dropped or grown.

A grown weight starts at zero and must not inherit a stale Adam moment or SGD momentum; a dropped weight's
moments are zeroed so that a later regrowth starts clean too. Only optimisers whose state layout is known
are accepted.
"""

import logging
from typing import Dict, Iterable, Optional

import torch

from sparsedm.errors import UserError

log = logging.getLogger(__name__)
_warned = False  # the slow-path hint is given once per process

# per-parameter state tensors shaped like the parameter, by optimiser class
MOMENT_KEYS = {
    torch.optim.Adam: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.AdamW: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.SGD: ("momentum_buffer",),
}
# the first moment, read by momentum-based methods (SNFS)
MOMENTUM_KEY = {torch.optim.Adam: "exp_avg", torch.optim.AdamW: "exp_avg", torch.optim.SGD: "momentum_buffer"}


def check_supported(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) in MOMENT_KEYS:
        return
    inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
    if type(inner) in MOMENT_KEYS:  # Accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer
        raise UserError(
            f"the sparse engine got the wrapper {type(optimizer).__name__}; pass the {type(inner).__name__} it wraps "
            "(accelerate: optimizer.optimizer)"
        )
    supported = ", ".join(cls.__name__ for cls in MOMENT_KEYS)
    raise UserError(
        f"optimiser {type(optimizer).__name__} is not supported by the sparse engine; use one of {supported}"
    )


def check_holds(optimizer: torch.optim.Optimizer, params: Dict[str, torch.Tensor]) -> None:
    """Every sparse tensor must be one the optimiser steps: else its moments cannot follow the masks."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params.items() if id(p) not in held]
    if missing:
        raise UserError(
            f"the optimiser does not hold {len(missing)} of the sparse tensors (e.g. {missing[0]}); build the engine "
            "on the module the optimiser trains, or leave those tensors out with sparse.exclude"
        )


def warn_if_slow_on_zeros(optimizer: torch.optim.Optimizer) -> None:
    """Point to `fused=True` when a CPU Adam would take torch's slow path for the square root of zero.

    Masked weights keep exp_avg_sq at exactly zero, and on CPU `torch.sqrt` is ~15x slower on zeros than on
    other values (torch 2.13; NumPy's is not), which makes the per-tensor Adam step ~2.5x slower at S = 0.5.
    The fused kernel does not have that slow path and is faster on CPU anyway.
    """
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return
    global _warned
    slow = [
        g for g in optimizer.param_groups if not g.get("fused") and any(p.device.type == "cpu" for p in g["params"])
    ]
    if slow and not _warned:
        _warned = True
        log.warning(
            "%s on CPU without fused=True is slow on the zeros of masked weights; build it with fused=True",
            type(optimizer).__name__,
        )


@torch.no_grad()
def zero_moments_(optimizer: torch.optim.Optimizer, param: torch.Tensor, flat_indices: Iterable[torch.Tensor]) -> None:
    """Set every moment of `param` to zero at the given flat positions."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in MOMENT_KEYS[type(optimizer)]:
        moment = state.get(key)
        if moment is None:
            continue
        flat = moment.view(-1)
        for idx in flat_indices:
            flat[idx] = 0


@torch.no_grad()
def mask_moments_(optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero every moment of `param` wherever `mask` is False."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in MOMENT_KEYS[type(optimizer)]:
        moment = state.get(key)
        if moment is not None:
            moment.masked_fill_(~mask, 0)


def momentum(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> Optional[torch.Tensor]:
    """The optimiser's first moment of `param` (Adam's exp_avg, SGD's momentum buffer); None before its first
    step or for SGD without momentum."""
    return (optimizer.state.get(param) or {}).get(MOMENTUM_KEY[type(optimizer)])
