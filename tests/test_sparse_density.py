import math

import pytest

from sparsedm.errors import UserError
from sparsedm.sparse.density import (
    allocate_densities,
    custom_densities,
    erk_densities,
    nonzero_counts,
    uniform_densities,
)

SHAPES = {
    "conv_in": (8, 3, 3, 3),
    "conv": (64, 64, 3, 3),
    "linear": (256, 128),
    "gru_ih": (288, 96),
    "tiny": (4, 2),
}


def total_nonzeros(densities, shapes):
    return sum(nonzero_counts(densities, shapes).values())


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.75, 0.9, 0.99])
def test_erk_never_exceeds_one_and_meets_the_global_target(sparsity):
    densities = erk_densities(SHAPES, sparsity)
    assert all(0 < d <= 1 for d in densities.values())
    target = (1 - sparsity) * sum(math.prod(s) for s in SHAPES.values())
    assert abs(total_nonzeros(densities, SHAPES) - target) <= len(SHAPES)


def test_erk_makes_overfull_tensors_dense_and_resolves_the_rest():
    densities = erk_densities(SHAPES, 0.5)
    # small tensors have a large (sum of dims) / (product of dims): they would exceed 1 and become dense
    assert densities["tiny"] == 1.0 and densities["conv_in"] == 1.0
    # among the rest, density is proportional to sum(shape) / prod(shape) (one ε)
    ratio = {n: densities[n] / (sum(SHAPES[n]) / math.prod(SHAPES[n])) for n in ("conv", "linear", "gru_ih")}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()))
    assert densities["conv"] < densities["linear"]  # larger tensors are sparser


def test_uniform_and_custom_maps_are_honoured():
    assert list(uniform_densities(SHAPES, 0.3).values()) == pytest.approx([0.7] * len(SHAPES))
    custom = custom_densities(SHAPES, 0.5, {"^conv$": 0.2, "gru": 0.9})
    assert custom["conv"] == 0.2 and custom["gru_ih"] == 0.9 and custom["linear"] == 0.5
    counts = nonzero_counts(custom, SHAPES)
    assert counts["conv"] == round(0.2 * 64 * 64 * 9)
    with pytest.raises(UserError, match="matches no sparse tensor"):
        custom_densities(SHAPES, 0.5, {"attention": 0.5})
    assert allocate_densities(SHAPES, 0.5, "custom", {"tiny": 1.0})["tiny"] == 1.0


def test_zero_sparsity_is_dense_everywhere():
    assert set(erk_densities(SHAPES, 0.0).values()) == {1.0}
