"""Paired comparison of each sparse configuration with Dense, seed by seed.

Runs of one seed share the data order, the diffusion noise and the initial weights before masking, so the
per-seed difference d_s = FID(config, s) - FID(Dense, s) removes the seed-to-seed spread that an unpaired
mean ± std would carry. Over the n seeds both have, the mean difference gets a two-sided 95% confidence
interval from Student's t with n - 1 degrees of freedom: mean ± t(0.975, n - 1) x sd / sqrt(n). Lower FID is
better, so an interval wholly below 0 reads "better than Dense", wholly above 0 "worse", else
"indistinguishable"; with fewer than two paired seeds there is no interval.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional

from scipy.stats import t as student_t

CONFIDENCE = 0.95
BETTER, WORSE, SAME, UNKNOWN = "better", "worse", "indistinguishable", "n/a (< 2 paired seeds)"


@dataclass
class PairedDifference:
    n: int  # seeds present for both the configuration and Dense
    mean: Optional[float]  # mean of FID(config) - FID(Dense); None without a paired seed
    ci_low: Optional[float]  # 95% t interval of that mean; None with n < 2
    ci_high: Optional[float]
    verdict: str  # better | indistinguishable | worse | n/a


def paired_difference(fids: Dict[int, float], dense_fids: Dict[int, float]) -> PairedDifference:
    """The configuration's FIDs against Dense's, both keyed by seed."""
    differences = [fids[seed] - dense_fids[seed] for seed in sorted(fids) if seed in dense_fids]
    n = len(differences)
    if n == 0:
        return PairedDifference(0, None, None, None, UNKNOWN)
    mean = sum(differences) / n
    if n < 2:
        return PairedDifference(n, mean, None, None, UNKNOWN)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half_width = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half_width, mean + half_width
    verdict = BETTER if high < 0 else WORSE if low > 0 else SAME
    return PairedDifference(n, mean, low, high, verdict)
