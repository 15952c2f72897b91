"""KID, the Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"), from the FID features.

KID is the squared MMD between the generated and the real Inception features under the cubic polynomial kernel
k(x, y) = (x·y / d + 1)^3, estimated without bias: unlike FID, its expectation does not depend on the number of
samples, so scores from 1,000 samples against 1,000 or 500 references can be compared. As torchmetrics'
`KernelInceptionDistance` (and torch-fidelity): the mean and the (population) std of the estimate over
`subsets` random subsets of `subset_size` items of each set, drawn by `torch.randperm`; here from a seeded
generator, so a score is reproducible, and the kernel matrices of the whole sets are computed once in float64,
each subset taking its block. tests/test_kid.py checks it equal to torchmetrics' on real images.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from sparsedm.errors import UserError

SUBSETS = 100  # torchmetrics' and torch-fidelity's default
SUBSET_SIZE = 1000  # at most; capped at the smaller set (500 training emoji)


@dataclass(frozen=True)
class KID:
    mean: float  # the mean of the unbiased MMD² estimates over the subsets
    # their std over the subsets (how much the subset draw moves it, not a model's spread); None when a subset is
    # the whole of both sets (1,000 samples against 1,000 references): every draw is then the same, and a std of 0
    # would read as a precise score
    std: Optional[float]
    subset_size: int
    subsets: int


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a·b / d + 1)^3 for every pair of rows (torchmetrics' poly_kernel with its defaults)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def unbiased_mmd2(k_real: np.ndarray, k_cross: np.ndarray, k_fake: np.ndarray) -> float:
    """MMD² of two subsets of m items each from their kernel blocks, the diagonals left out (torchmetrics'
    maximum_mean_discrepancy)."""
    m = k_real.shape[0]
    within = (k_real.sum() - np.trace(k_real) + k_fake.sum() - np.trace(k_fake)) / (m * (m - 1))
    return float(within - 2 * k_cross.sum() / m**2)


def kid(
    fake: np.ndarray, real: np.ndarray, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = 0
) -> KID:
    """KID of N x d generated features against M x d real ones; subsets of min(subset_size, N, M) items."""
    fake, real = np.asarray(fake, dtype=np.float64), np.asarray(real, dtype=np.float64)
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        raise UserError(f"KID needs at least 2 items per set, got {len(fake)} and {len(real)}")
    k_real, k_fake, k_cross = (
        polynomial_kernel(real, real),
        polynomial_kernel(fake, fake),
        polynomial_kernel(real, fake),
    )
    if size == len(fake) == len(real):
        return KID(unbiased_mmd2(k_real, k_cross, k_fake), None, size, 1)
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = torch.randperm(len(real), generator=generator)[:size].numpy()
        f = torch.randperm(len(fake), generator=generator)[:size].numpy()
        scores.append(unbiased_mmd2(k_real[np.ix_(r, r)], k_cross[np.ix_(r, f)], k_fake[np.ix_(f, f)]))
    return KID(float(np.mean(scores)), float(np.std(scores)), size, subsets)
