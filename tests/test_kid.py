"""KID (sparsedm/eval/kid.py) against torchmetrics' KernelInceptionDistance and against known answers."""

import numpy as np
import pytest
import torch

from sparsedm.errors import UserError
from sparsedm.eval.fid import array_batches, extract_features
from sparsedm.eval.inception import load_inception
from sparsedm.eval.kid import kid
from tests.test_fid import photo_crops


class InceptionFeatures(torch.nn.Module):
    """The FID Inception features of uint8 batches, as sparsedm computes them, for torchmetrics' metric."""

    num_features = 2048  # torchmetrics reads it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(extract_features(array_batches(batch), progress=False))


def torchmetrics_kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int):
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=InceptionFeatures(), subsets=subsets, subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(seed)  # its subsets come from the global generator, in the same order as ours
    mean, std = metric.compute()
    return mean.item(), std.item()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.mark.slow  # real Inception features: 10-35 s
def test_kid_equals_torchmetrics_on_inception_features_of_real_photos():
    load_inception()
    real, fake = photo_crops(24, seed=0), photo_crops(20, seed=1)
    real_features = extract_features(array_batches(real), progress=False)
    fake_features = extract_features(array_batches(fake), progress=False)
    expected = torchmetrics_kid(to_tensor(real), to_tensor(fake), subsets=7, subset_size=12, seed=3)
    ours = kid(fake_features, real_features, subsets=7, subset_size=12, seed=3)
    assert (ours.mean, ours.std) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ours.std > 0  # the subsets differ
    # one subset of every item: no draw left, so no spread to state (not 0), and still torchmetrics' value
    whole = kid(fake_features, real_features[:20], subsets=3, subset_size=20)
    assert whole.std is None and whole.subsets == 1
    assert whole.mean == pytest.approx(torchmetrics_kid(to_tensor(real[:20]), to_tensor(fake), 1, 20, 0)[0], rel=1e-9)


def test_kid_of_two_samples_of_one_distribution_is_near_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kid(a, b, subsets=20, subset_size=200)
    shifted = kid(a + 0.5, b, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3  # unbiased: centred on 0, negative values allowed
    assert shifted.mean > 10 * abs(same.mean) and shifted.mean > 0


def test_kid_hand_computed_on_two_points_per_set():
    # d = 1: k(x, y) = (x y + 1)^3. real {0, 1}, fake {2, 3}: k_rr off-diagonal (0 + 1)^3 = 1, k_ff (6 + 1)^3 = 343,
    # cross k(0, 2) = k(0, 3) = 1, k(1, 2) = 27, k(1, 3) = 64; MMD² = (2 + 686) / 2 - 2 (1 + 1 + 27 + 64) / 4
    result = kid(np.array([[2.0], [3.0]]), np.array([[0.0], [1.0]]), subsets=2, subset_size=2)
    assert result.mean == pytest.approx(344 - 46.5) and result.std is None and result.subset_size == 2


def test_kid_subsets_are_capped_at_the_smaller_set_and_need_two_items():
    rng = np.random.default_rng(1)
    assert kid(rng.standard_normal((30, 4)), rng.standard_normal((10, 4)), subsets=2).subset_size == 10
    with pytest.raises(UserError, match="at least 2"):
        kid(rng.standard_normal((1, 4)), rng.standard_normal((10, 4)))


def test_kid_of_whole_sets_states_no_subset_std_and_smaller_subsets_do():
    """1,000 samples against 1,000 references (the studies): every subset of 1,000 is the whole of both sets, so
    the std over subsets is 0 by construction and would read as a precise score; it is left unstated."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 0.3
    assert kid(a, b, subsets=10, subset_size=1000).std is None
    part = kid(a, b[:40], subsets=10, subset_size=1000)  # subsets of 40: the 50 samples are drawn from
    assert part.subset_size == 40 and part.std > 0
