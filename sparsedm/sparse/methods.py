"""The sparse training methods, one record each: everything the rest of sparsedm needs to know about one.

A method is composed of parts, each a small function of one signature, in one file per kind:

    initial_mask.py      which weights are active at step 0                     (random)
    drop.py              the drop score: the active weights of lowest score go  (magnitude, magnitude and gradient)
    grow.py              which inactive weights are grown                       (gradient, random, momentum)
    density_schedule.py  the sparsity S_t over steps                            (constant, cubic)
    density.py           how S_t is spread over tensors (sparse.distribution)   (ERK, uniform, custom)
    redistribution.py    how many weights each tensor grows back                (its own, by momentum)

Each part declares what it reads (tensor_state.py: weights, masked or dense gradient, optimiser moments); the
engine supplies exactly that, in either storage (storage/), and a storage that cannot supply it refuses the
method at start-up. The engine asks the record's parts what changes and applies the change in one place (engine.py). The config
accepts a method by its name or an alias, the sweep grid spans S and p by `sparse` and `dynamic`, the cost
accounting calls `train_flops`, and the report and plots show `display_name` and `colour`. A new method is a
record here plus, at most, one file of its parts.
"""

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from sparsedm.errors import UserError
from sparsedm.sparse import density_schedule, redistribution
from sparsedm.sparse.density_schedule import SparsitySchedule
from sparsedm.sparse.drop import DropScore, magnitude, magnitude_and_gradient
from sparsedm.sparse.grow import GrowRule, at_random, by_gradient, by_momentum
from sparsedm.sparse.initial_mask import InitialMask, random
from sparsedm.sparse.redistribution import Redistribution
from sparsedm.sparse.tensor_state import Read, reads_of

# train_flops(f_S, f_D, ΔT) -> training FLOPs per sample and step, backward ≈ 2 × forward (Evci et al. 2020,
# app. H); f_S is the sparse forward FLOPs averaged over the run's steps (it varies when the counts do)
TrainFlops = Callable[[float, float, int], float]


@dataclass(frozen=True)
class Method:
    name: str  # the config spelling, e.g. "rigl"
    display_name: str  # in tables and plots, e.g. "RigL-DM"
    sparse: bool  # has masks (a sparsity S)
    dynamic: bool  # changes its masks every ΔT steps (a prune rate p)
    train_flops: TrainFlops
    initial_mask: InitialMask = random
    drop: DropScore = magnitude  # dynamic methods: the active weights of lowest score are dropped
    grow: Optional[GrowRule] = None  # dynamic methods: which inactive weights to activate
    sparsity_schedule: SparsitySchedule = density_schedule.constant  # S_t over steps
    redistribute: Optional[Redistribution] = None  # None: a tensor grows back what it dropped
    colour: Optional[str] = None  # in plots; None: the next of matplotlib's cycle
    paper: bool = False  # one of the paper's four (Oliveira et al. 2025): the demo's and the sweep's default
    aliases: Tuple[str, ...] = ()  # other accepted spellings

    @property
    def reads(self) -> FrozenSet[Read]:
        """What the parts read at an update (each part declares it: tensor_state.py)."""
        if not self.dynamic:
            return frozenset()
        return reads_of(self.drop) | reads_of(self.grow) | reads_of(self.redistribute)

    @property
    def needs_dense_gradient(self) -> bool:
        """A part reads dL/dW at every entry: the engine collects it on the steps before an update."""
        return Read.DENSE_GRAD in self.reads

    @property
    def dense_moments(self) -> bool:
        """A part reads the moments of inactive weights: the optimiser sees dense gradients, which keep them."""
        return Read.DENSE_MOMENTUM in self.reads

    @property
    def counts_vary(self) -> bool:
        """Whether a tensor's number of active weights may change during training."""
        return self.sparsity_schedule is not density_schedule.constant or self.redistribute is not None


def _dense_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    return 3.0 * f_dense


def _sparse_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    return 3.0 * f_sparse


def _rigl_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    """(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1): every ΔT steps the dense gradient costs a dense backward pass."""
    dt = update_interval
    return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)


def _snfs_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    """2 f_S + f_D: the momentum of every weight needs the dense weight gradient at every step (Evci et al. 2020,
    app. H); the forward pass and the gradient w.r.t. the activations stay sparse."""
    return 2.0 * f_sparse + f_dense


# In this order in tables, plots and sweeps.
METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method("dense", "Dense", sparse=False, dynamic=False, train_flops=_dense_flops, paper=True),
        Method(
            "static", "Static-DM", sparse=True, dynamic=False, train_flops=_sparse_flops, colour="tab:blue", paper=True
        ),
        Method(
            "rigl",
            "RigL-DM",
            sparse=True,
            dynamic=True,
            train_flops=_rigl_flops,
            grow=by_gradient,
            colour="tab:red",
            paper=True,
        ),
        # SET (Mocanu et al. 2018) is MagRan's grow rule
        Method(
            "magran",
            "MagRan-DM",
            sparse=True,
            dynamic=True,
            train_flops=_sparse_flops,
            grow=at_random,
            colour="tab:green",
            paper=True,
            aliases=("set",),
        ),
        # Sparse momentum (Dettmers & Zettlemoyer 2019): grow by |momentum|, move density to busy layers
        Method(
            "snfs",
            "SNFS-DM",
            sparse=True,
            dynamic=True,
            train_flops=_snfs_flops,
            grow=by_momentum,
            redistribute=redistribution.by_momentum,
            colour="tab:purple",
            aliases=("sparse-momentum",),
        ),
        # GraNet (Liu et al. 2021), starting sparse: S rises on a cubic schedule, regrowth by gradient
        Method(
            "granet",
            "GraNet-DM",
            sparse=True,
            dynamic=True,
            train_flops=_rigl_flops,
            grow=by_gradient,
            sparsity_schedule=density_schedule.cubic,
            colour="tab:orange",
        ),
        # MEST (Yuan et al. 2021): drop by |W| + λ|dL/dW| at the active weights, grow at random (its MEST-EM)
        Method(
            "mest",
            "MEST-DM",
            sparse=True,
            dynamic=True,
            train_flops=_sparse_flops,
            drop=magnitude_and_gradient,
            grow=at_random,
            colour="tab:brown",
        ),
    )
}


DEFAULT_METHOD = "rigl"  # sparse.method when a config does not say


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


def dense_method() -> Method:
    """The record without masks: the baseline every sparse run is compared with."""
    return next(m for m in METHODS.values() if not m.sparse)


def static_method() -> Method:
    """The sparse record whose masks never change: what a dynamic method is compared with at the same S."""
    return next(m for m in METHODS.values() if m.sparse and not m.dynamic)


def paper_methods() -> List[str]:
    """The paper's four methods, in order."""
    return [m.name for m in METHODS.values() if m.paper]


def names_and_aliases() -> str:
    """ "dense, static, rigl, magran (alias set), ...": for help texts."""
    return ", ".join(m.name + (f" (alias {', '.join(m.aliases)})" if m.aliases else "") for m in METHODS.values())
