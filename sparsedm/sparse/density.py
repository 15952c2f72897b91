"""Layer-wise density: how the global sparsity S is spread over the sparse tensors.

- uniform: every tensor gets density 1 - S.
- ERK (Erdős–Rényi-Kernel, Evci et al. 2020): density_l = ε · sum(shape_l) / prod(shape_l), one ε for all
  tensors, chosen so that Σ density_l · n_l = (1 - S) · Σ n_l. A tensor whose density would exceed 1 is made
  dense and ε is solved again over the rest, until none exceeds 1.
- custom: an explicit {regex: density} map; tensors it does not name get 1 - S.
Non-zero counts are round(density · numel), so the global target holds within one weight per tensor.
"""

import math
import re
from typing import Dict, Mapping, Sequence

from sparsedm.errors import UserError, choice
from sparsedm.sparse.config import Distribution

Shapes = Mapping[str, Sequence[int]]


def uniform_densities(shapes: Shapes, sparsity: float) -> Dict[str, float]:
    return {name: 1.0 - sparsity for name in shapes}


def erk_densities(shapes: Shapes, sparsity: float) -> Dict[str, float]:
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numel[name] for name, shape in shapes.items()}
    target_nonzeros = (1.0 - sparsity) * sum(numel.values())
    dense: set = set()
    while True:
        sparse_names = [n for n in shapes if n not in dense]
        budget = target_nonzeros - sum(numel[n] for n in dense)
        eps = budget / sum(raw[n] * numel[n] for n in sparse_names)
        overfull = {n for n in sparse_names if eps * raw[n] > 1.0}
        if not overfull:
            break
        dense |= overfull
        if len(dense) == len(shapes):  # S so low that every tensor is dense
            break
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def custom_densities(shapes: Shapes, sparsity: float, patterns: Mapping[str, float]) -> Dict[str, float]:
    names = list(shapes)
    for pattern in patterns:
        if not any(re.search(pattern, n) for n in names):
            raise UserError(f"sparse.custom_densities pattern {pattern!r} matches no sparse tensor")
    densities = {}
    for name in names:
        match = next((d for p, d in patterns.items() if re.search(p, name)), None)
        densities[name] = float(match) if match is not None else 1.0 - sparsity
    return densities


def allocate_densities(
    shapes: Shapes, sparsity: float, distribution: str, patterns: Mapping[str, float] = None
) -> Dict[str, float]:
    distribution = choice(Distribution, distribution, "sparse.distribution")
    if distribution == Distribution.uniform:
        return uniform_densities(shapes, sparsity)
    if distribution == Distribution.erk:
        return erk_densities(shapes, sparsity)
    return custom_densities(shapes, sparsity, patterns or {})


def nonzero_counts(densities: Mapping[str, float], shapes: Shapes) -> Dict[str, int]:
    """round(density · numel) per tensor: the exact number of active weights each mask keeps."""
    return {n: int(round(densities[n] * math.prod(shapes[n]))) for n in densities}
