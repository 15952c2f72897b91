"""The redistribution part: how many weights each tensor grows back at an update, given what it dropped.

    Redistribution(counts, states, capacity) -> grow counts per tensor
        counts: what each tensor would grow alone (the k it dropped by p_t); states: TensorState per tensor;
        capacity: how many candidates each tensor has (it cannot grow more)

Without one (the paper's methods, GraNet) a tensor grows back what it dropped, so its density is fixed.

- by_momentum, SNFS's momentum redistribution (Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch",
  Algorithm 1): the weights dropped over all tensors are grown back in proportion to each tensor's mean
  |momentum| over its active weights, so density moves to the layers whose weights still move. Counts are
  apportioned by largest remainder (the total is kept); a tensor given more than its capacity is filled and
  the rest goes to the others in proportion again. If no tensor has momentum yet, each grows back its own.
"""

import math
from typing import Callable, Dict

from sparsedm.sparse.tensor_state import Read, TensorState, reads

Redistribution = Callable[[Dict[str, int], Dict[str, TensorState], Dict[str, int]], Dict[str, int]]


def apportion(total: int, weights: Dict[str, float]) -> Dict[str, int]:
    """`total` split in proportion to `weights` (> 0, summing > 0), rounded by largest remainder (ties: order)."""
    norm = sum(weights.values())
    exact = {n: total * w / norm for n, w in weights.items()}
    counts = {n: math.floor(x) for n, x in exact.items()}
    names = list(weights)
    by_remainder = sorted(names, key=lambda n: (-(exact[n] - counts[n]), names.index(n)))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def mean_momentum(state: TensorState) -> float:
    """Mean |momentum| over the tensor's active weights (0 before the optimiser's first step)."""
    if state.momentum is None or not bool(state.mask.any()):
        return 0.0
    return float(state.momentum.detach().abs()[state.mask].float().mean())


@reads(Read.MOMENTUM)
def by_momentum(counts: Dict[str, int], states: Dict[str, TensorState], capacity: Dict[str, int]) -> Dict[str, int]:
    scores = {n: mean_momentum(states[n]) for n in counts}
    if not any(s > 0 for s in scores.values()):
        return dict(counts)
    grown = {n: 0 for n in counts}
    left = sum(counts.values())
    open_ = [n for n in counts if scores[n] > 0 and capacity[n] > 0]
    while left > 0 and open_:
        share = apportion(left, {n: scores[n] for n in open_})
        for name in open_:
            add = min(share[name], capacity[name] - grown[name])
            grown[name] += add
            left -= add
        open_ = [n for n in open_ if grown[n] < capacity[n]]
    return grown
