"""Paired comparison of each sparse configuration with Dense, seed by seed.

Runs of one seed share the data order, the diffusion noise and the initial weights before masking, so the
per-seed difference d_s = FID(config, s) - FID(Dense, s) removes the seed-to-seed spread that an unpaired
mean ± std would carry. Over the n seeds both have, the mean difference gets a two-sided 95% confidence
interval from Student's t with n - 1 degrees of freedom: mean ± t(0.975, n - 1) x sd / sqrt(n). Lower FID is
better, so an interval wholly below 0 reads "better than Dense", wholly above 0 "worse", else
"indistinguishable"; with fewer than two paired seeds there is no interval.

A table of many such comparisons finds some "better" or "worse" by chance alone. `holm` adjusts the two-sided
p-values of the paired t tests (the interval excludes 0 exactly when p < 0.05) over the family of a table's
comparisons (Holm 1979): sorted p_(1) <= ... <= p_(m), the adjusted p_(i) = max over j <= i of min(1, (m - j + 1)
p_(j)); a comparison keeps its verdict when its adjusted p is below 1 - CONFIDENCE, else it reads
"indistinguishable". Holm controls the chance of any false verdict in the family at 5%, whatever the
dependence between the comparisons.
"""

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

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
    p_value: Optional[float] = None  # two-sided p of the paired t test of mean 0; None with n < 2
    holm_p: Optional[float] = None  # Holm-adjusted over its table's family (`holm`); None until adjusted
    holm_verdict: Optional[str] = None


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
    if sd == 0:  # every seed gave the same difference: certain, unless it is none
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * student_t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return PairedDifference(n, mean, low, high, verdict, p_value)


def holm(results: List[PairedDifference]) -> List[PairedDifference]:
    """The results with holm_p and holm_verdict set over the family of those that have a p-value (the others,
    with fewer than two paired seeds, are left as they are and are not counted in the family)."""
    tested = sorted((r.p_value, i) for i, r in enumerate(results) if r.p_value is not None)
    adjusted, running = {}, 0.0
    for rank, (p_value, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p_value))
        adjusted[i] = running
    out = []
    for i, result in enumerate(results):
        if i not in adjusted:
            out.append(result)
            continue
        keeps = adjusted[i] < 1 - CONFIDENCE
        out.append(replace(result, holm_p=adjusted[i], holm_verdict=result.verdict if keeps else SAME))
    return out
