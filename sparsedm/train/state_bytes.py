"""The bytes a training run's state holds, by part: the memory issue #35 pairs runs by ("for the same memory").

    parameters  the model's parameters; a compact layer's (sparse.kernels) are its `values`, and its pattern's
                index tensors count here too, since they replace the dense weight's positions
    gradients   each parameter's .grad
    optimizer   the optimiser's state (Adam's two moments and step counters)
    ema         the EMA model's parameters
    masks       the engine's masks (one bool per weight of each sparse tensor) and its exploration record (one bit)

Each distinct storage is counted once, by the first part holding it, so the parts add up to `total`. Masked
storage holds parameters, gradients, moments and EMA at the dense shape and the masks beside them; compact
storage holds them at the non-zero count. Not counted: buffers, activations, the dense gradient RigL computes
on update steps, DDP's buckets and the allocator's slack: this is the state kept between steps, not a peak.
"""

from typing import Iterable, Optional, Set

import torch
from torch import nn

from sparsedm.sparse import EMA, SparseEngine
from sparsedm.sparse.kernels.compact_layers import CompactConv, CompactLinear


def held_bytes(tensors: Iterable, seen: Optional[Set[int]] = None) -> int:
    """Bytes of the distinct storages of `tensors` (None and non-tensors skipped) that are not in `seen` (the
    data pointers of storages counted already; updated)."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def training_state_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: Optional[EMA], engine: SparseEngine
) -> dict:
    """{part: bytes, "total": bytes} of the parts above (`model` unwrapped from DDP)."""
    compact = [m for m in model.modules() if isinstance(m, (CompactLinear, CompactConv))]
    params = list(model.parameters())
    parts = {
        "parameters": params + [t for layer in compact for t in layer.pattern.tensors()],
        "gradients": [p.grad for p in params],
        "optimizer": [t for state in optimizer.state.values() for t in state.values()],
        "ema": list(ema.module.parameters()) if ema is not None else [],
        "masks": list(engine.masks.values()) + engine.explored.tensors(),
    }
    seen: Set[int] = set()
    counted = {part: held_bytes(tensors, seen) for part, tensors in parts.items()}
    return {**counted, "total": sum(counted.values())}
