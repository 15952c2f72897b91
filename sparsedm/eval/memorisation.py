"""Memorisation: how many generated samples are near copies of a training item.

A sample x is a near copy when its nearest training item is much closer than the second nearest:

    d(x, NN_1(x)) < NEAR_COPY_RATIO * d(x, NN_2(x)),        NEAR_COPY_RATIO = 1/3

the ratio test of Yoon et al. 2023 ("Diffusion probabilistic models generalize when they fail to memorize")
and Gu et al. 2023 ("On memorization in diffusion models", arXiv 2310.02664), who count the share of such
samples as the memorisation ratio. Distances are Euclidean, in Inception pool features (the FID network's) and
in rendered pixels. The same test on held-out real items against the training split is the baseline: the
share a model would show by drawing new items from the data distribution (near-duplicates across the splits).
Two identical training items make every distance to them tie, so a copy of a duplicated item is not counted.
"""

import numpy as np
import torch

NEAR_COPY_RATIO = 1 / 3
RULE = "nearest training item closer than 1/3 of the second nearest (Yoon et al. 2023; Gu et al. 2023)"


def nearest_two(query: np.ndarray, reference: np.ndarray, chunk: int = 256) -> np.ndarray:
    """N x 2 Euclidean distances from each query row to its nearest and second-nearest reference rows (float64)."""
    if len(reference) < 2:
        raise ValueError(f"the ratio test needs at least 2 reference items, got {len(reference)}")
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float64).reshape(len(reference), -1))
    ref_sq = (ref * ref).sum(dim=1)
    found = []
    for rows in torch.as_tensor(np.asarray(query, dtype=np.float64).reshape(len(query), -1)).split(chunk):
        squared = (rows * rows).sum(dim=1, keepdim=True) + ref_sq - 2 * rows @ ref.T  # |a|^2 + |b|^2 - 2 a.b
        found.append(squared.clamp_min(0).topk(2, dim=1, largest=False).values.sqrt())
    return torch.cat(found).numpy()


def near_copies(query: np.ndarray, reference: np.ndarray, ratio: float = NEAR_COPY_RATIO) -> np.ndarray:
    """Per query row: True when it is a near copy of a reference row (d1 < ratio x d2)."""
    distances = nearest_two(query, reference)
    return distances[:, 0] < ratio * distances[:, 1]


def near_copy_share(query: np.ndarray, reference: np.ndarray, ratio: float = NEAR_COPY_RATIO) -> float:
    """The share of query rows that are near copies of a reference row."""
    return float(near_copies(query, reference, ratio).mean())


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images as N x (H W C) floats in [0, 1], the pixel space of the test."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0
