"""Memorisation: how many generated samples are near copies of a training item.

A sample x is a near copy when its nearest training item is much closer than the second nearest:

    d(x, NN_1(x)) < NEAR_COPY_RATIO * d(x, NN_2(x)),        NEAR_COPY_RATIO = 1/3

the ratio test of Yoon et al. 2023 ("Diffusion probabilistic models generalize when they fail to memorize")
and Gu et al. 2023 ("On memorization in diffusion models", arXiv 2310.02664), who count the share of such
samples as the memorisation ratio. Distances are Euclidean, in Inception pool features (the FID network's) and
in rendered pixels. The same test on held-out real items against the training split is the baseline: the
share a model would show by drawing new items from the data distribution (near-duplicates across the splits).
Two identical training items make every distance to them tie, so a copy of a duplicated item is not counted.
Data sets whose items come in groups of variants (OpenMoji's skin tones and genders: one drawing in up to 26
colourings) would hide copies the same way, the second nearest being another colouring of the first; given the
training items' groups, the second nearest is taken among the items of other groups.
"""

from typing import Optional, Sequence

import numpy as np
import torch

NEAR_COPY_RATIO = 1 / 3
RULE = "nearest training item closer than 1/3 of the second nearest (Yoon et al. 2023; Gu et al. 2023)"
GROUP_RULE = "; the second nearest of another variant group"


def rule(groups: Optional[Sequence[str]]) -> str:
    """The rule as the scores record it."""
    return RULE + (GROUP_RULE if groups is not None else "")


def nearest_two(
    query: np.ndarray, reference: np.ndarray, groups: Optional[Sequence[str]] = None, chunk: int = 256
) -> np.ndarray:
    """N x 2 Euclidean distances from each query row to its nearest reference row and to the second nearest
    (with `groups`, one per reference row: the nearest outside the nearest row's group), float64."""
    if len(reference) < 2:
        raise ValueError(f"the ratio test needs at least 2 reference items, got {len(reference)}")
    if groups is not None and len(groups) != len(reference):
        raise ValueError(f"{len(groups)} groups for {len(reference)} reference items")
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float64).reshape(len(reference), -1))
    ref_sq = (ref * ref).sum(dim=1)
    group_ids = None
    if groups is not None:
        group_ids = torch.as_tensor(np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1))
        if len(group_ids.unique()) < 2:
            raise ValueError("the ratio test over groups needs reference items of at least 2 groups")
    found = []
    for rows in torch.as_tensor(np.asarray(query, dtype=np.float64).reshape(len(query), -1)).split(chunk):
        squared = (rows * rows).sum(dim=1, keepdim=True) + ref_sq - 2 * rows @ ref.T  # |a|^2 + |b|^2 - 2 a.b
        squared = squared.clamp_min(0)
        if group_ids is None:
            found.append(squared.topk(2, dim=1, largest=False).values.sqrt())
            continue
        first, nearest = squared.min(dim=1)
        same_group = group_ids[None, :] == group_ids[nearest][:, None]
        second = squared.masked_fill(same_group, float("inf")).min(dim=1).values
        found.append(torch.stack([first, second], dim=1).sqrt())
    return torch.cat(found).numpy()


def near_copies(
    query: np.ndarray,
    reference: np.ndarray,
    groups: Optional[Sequence[str]] = None,
    ratio: float = NEAR_COPY_RATIO,
) -> np.ndarray:
    """Per query row: True when it is a near copy of a reference row (d1 < ratio x d2)."""
    distances = nearest_two(query, reference, groups)
    return distances[:, 0] < ratio * distances[:, 1]


def near_copy_share(
    query: np.ndarray,
    reference: np.ndarray,
    groups: Optional[Sequence[str]] = None,
    ratio: float = NEAR_COPY_RATIO,
) -> float:
    """The share of query rows that are near copies of a reference row."""
    return float(near_copies(query, reference, groups, ratio).mean())


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images as N x (H W C) floats in [0, 1], the pixel space of the test."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0
