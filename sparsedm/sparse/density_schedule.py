"""The density schedule part: the sparsity S_t the masks hold from step t on.

    SparsitySchedule(S, S_i, t, t_end) -> S_t     (S: sparse.sparsity, S_i: sparse.initial_sparsity)

The engine asks at step 0 and at every update step; when S_t changes, the per-layer distribution
(density.py) is taken again at S_t and each tensor drops its surplus by the drop score.

- constant (the paper's methods, SNFS): S_t = S.
- cubic, GraNet's gradual magnitude pruning (Liu et al. 2021) on Zhu & Gupta's (2017) schedule:
  S_t = S + (S_0 - S) (1 - t / t_end)^3 for t < t_end, S from t_end on, with S_0 = min(S_i, S): the run
  starts sparse at S_0 and reaches S at the last update.
"""

from typing import Callable

SparsitySchedule = Callable[[float, float, int, int], float]


def constant(final: float, initial: float, t: int, end_step: int) -> float:
    return final


def cubic(final: float, initial: float, t: int, end_step: int) -> float:
    if t >= end_step:
        return final
    start = min(initial, final)
    return final + (start - final) * (1.0 - t / end_step) ** 3
