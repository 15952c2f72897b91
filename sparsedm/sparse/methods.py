"""The sparse training methods, one record each: everything the rest of sparsedm needs to know about one.

The config accepts a method by its name or an alias, the sweep grid spans S and p by `sparse` and
`dynamic`, the engine grows by `grow` and keeps the dense gradient when `needs_dense_gradient`, the cost
accounting calls `train_flops`, and the report and plots show `display_name`. A new method (SNFS, GraNet)
is a record here and its tests.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from sparsedm.errors import UserError
from sparsedm.sparse.grow import grow_by_gradient, grow_random

# grow(mask, k, dense_grad, generator) -> flat indices of k inactive entries to activate
GrowRule = Callable[[torch.Tensor, int, Optional[torch.Tensor], torch.Generator], torch.Tensor]
# train_flops(f_S, f_D, ΔT) -> training FLOPs per sample and step, backward ≈ 2 × forward (Evci et al. 2020, app. H)
TrainFlops = Callable[[float, float, int], float]


@dataclass(frozen=True)
class Method:
    name: str  # the config spelling, e.g. "rigl"
    display_name: str  # in tables and plots, e.g. "RigL-DM"
    sparse: bool  # has masks (a sparsity S)
    dynamic: bool  # changes its masks every ΔT steps (a prune rate p)
    train_flops: TrainFlops
    grow: Optional[GrowRule] = None  # dynamic methods: which inactive weights to activate
    needs_dense_gradient: bool = False  # the grow rule reads the dense gradient of the update step
    aliases: Tuple[str, ...] = ()  # other accepted spellings


def _dense_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    return 3.0 * f_dense


def _sparse_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    return 3.0 * f_sparse


def _rigl_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    """(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1): every ΔT steps the dense gradient costs a dense backward pass."""
    dt = update_interval
    return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)


def _grow_by_gradient(mask, k, dense_grad, generator):
    return grow_by_gradient(dense_grad, mask, k)


def _grow_random(mask, k, dense_grad, generator):
    return grow_random(mask, k, generator)


# In this order in tables, plots and sweeps.
METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method("dense", "Dense", sparse=False, dynamic=False, train_flops=_dense_flops),
        Method("static", "Static-DM", sparse=True, dynamic=False, train_flops=_sparse_flops),
        Method(
            "rigl",
            "RigL-DM",
            sparse=True,
            dynamic=True,
            train_flops=_rigl_flops,
            grow=_grow_by_gradient,
            needs_dense_gradient=True,
        ),
        # SET (Mocanu et al. 2018) is MagRan's grow rule
        Method(
            "magran",
            "MagRan-DM",
            sparse=True,
            dynamic=True,
            train_flops=_sparse_flops,
            grow=_grow_random,
            aliases=("set",),
        ),
    )
}


def find_method(name: str) -> Optional[Method]:
    """The method called `name` or one of its aliases, else None."""
    return next((m for m in METHODS.values() if name == m.name or name in m.aliases), None)


def get_method(name: str, key: str = "sparse.method") -> Method:
    """The method called `name` (or an alias); a UserError listing the methods if there is none."""
    method = find_method(name)
    if method is None:
        aliases = ", ".join(f"{a!r} for {m.name}" for m in METHODS.values() for a in m.aliases)
        raise UserError(
            f"{key}={name!r} is unknown; use one of {', '.join(METHODS)}" + (f" (or {aliases})" if aliases else "")
        )
    return method


def method_order(name: str) -> int:
    """Where a method comes in tables, plots and sweeps."""
    return list(METHODS).index(get_method(name).name)
