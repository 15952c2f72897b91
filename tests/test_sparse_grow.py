import torch

from sparsedm.sparse.drop import drop_by_magnitude
from sparsedm.sparse.grow import grow_by_gradient, grow_random


def test_rigl_grows_the_largest_gradient_inactive_positions():
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    grad = torch.tensor([[9.0, -5.0, 0.1, 8.0], [3.0, 7.0, -4.0, 0.2]])
    grown = grow_by_gradient(grad, mask, 3)
    # active positions (0, 3, 5) have larger gradients but are not candidates
    assert set(grown.tolist()) == {1, 4, 6}


def test_drop_removes_the_smallest_active_magnitudes():
    mask = torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool)
    weight = torch.tensor([0.5, -0.1, 2.0, 0.0, 0.2])
    assert set(drop_by_magnitude(weight, mask, 2).tolist()) == {1, 4}


def test_magran_growth_is_reproducible_for_a_seed_and_differs_across_seeds():
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[:500] = True

    def grow(seed):
        return grow_random(mask, 50, torch.Generator().manual_seed(seed)).tolist()

    assert grow(1) == grow(1)
    assert grow(1) != grow(2)
    picked = grow(3)
    assert len(set(picked)) == 50 and all(i >= 500 for i in picked)
