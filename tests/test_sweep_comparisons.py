"""Paired comparisons besides the one with Dense: dynamic against Static-DM at the same S, each p against the
largest, and `sparsedm compare A B` between two sweeps (the training-length rows of the study), on made-up run
folders whose answers are worked out by hand."""

import math

import pytest
from test_sweep_aggregate import fake_run

from sparsedm.cli import main
from sparsedm.experiments.aggregate import aggregate, read_runs
from sparsedm.experiments.comparisons import across_sweeps, versus_largest_prune_rate, versus_static

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def runs(sweep, name, method, fids, **options):
    for seed, fid in enumerate(fids):
        fake_run(sweep, f"{name}-seed{seed}", method, fid, seed=seed, **options)


def interval(differences):
    n = len(differences)
    mean = sum(differences) / n
    half = T_975_2 * math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.fixture
def grid(tmp_path):
    sweep = tmp_path / "grid"
    runs(sweep, "dense", "dense", [10.0, 12.0, 14.0])
    runs(sweep, "static-S0.5", "static", [20.0, 25.0, 21.0], sparsity=0.5)
    runs(sweep, "rigl-S0.5-p0.1", "rigl", [18.0, 22.0, 19.5], sparsity=0.5)  # -2, -3, -1.5 against static
    runs(sweep, "magran-S0.9-p0.1", "magran", [40.0, 41.0, 42.0], sparsity=0.9)  # no Static-DM at S = 0.9
    runs(sweep, "magran-S0.9-p0.05", "magran", [41.0, 45.0, 40.0], sparsity=0.9, prune_rate=0.05)  # +1, +4, -2
    runs(sweep, "magran-S0.9-p0.2", "magran", [40.5, 41.0, 42.5], sparsity=0.9, prune_rate=0.2)  # largest p
    return sweep


def key(comparison):
    row = comparison.row
    return row.method, row.sparsity, row.prune_rate


def test_dynamic_against_static_at_the_same_sparsity(grid):
    comparisons = versus_static(aggregate(read_runs(grid)))
    assert [key(c) for c in comparisons] == [("rigl", 0.5, 0.1)]  # MagRan-DM has no Static-DM at S = 0.9
    result = comparisons[0].result
    mean, low, high = interval([-2.0, -3.0, -1.5])
    assert (result.n, result.mean, result.ci_low, result.ci_high) == (
        3,
        pytest.approx(mean),
        pytest.approx(low),
        pytest.approx(high),
    )
    assert result.verdict == "better" and comparisons[0].against == "Static-DM, S = 0.5"


def test_each_prune_rate_against_the_largest_of_its_method_and_sparsity(grid):
    comparisons = versus_largest_prune_rate(aggregate(read_runs(grid)))
    # RigL-DM at S = 0.5 has one p: nothing to compare; MagRan-DM's p = 0.2 is the base, not compared with itself
    assert sorted(key(c) for c in comparisons) == [("magran", 0.9, 0.05), ("magran", 0.9, 0.1)]
    by_key = {key(c): c for c in comparisons}
    assert {c.against for c in comparisons} == {"p = 0.2"}
    mean, low, high = interval([0.5, 4.0, -2.5])  # p = 0.05 minus p = 0.2, seed by seed
    result = by_key["magran", 0.9, 0.05].result
    assert (result.mean, result.ci_low, result.ci_high) == (
        pytest.approx(mean),
        pytest.approx(low),
        pytest.approx(high),
    )
    assert result.verdict == "indistinguishable"
    assert by_key["magran", 0.9, 0.1].result.mean == pytest.approx(-1 / 3)


def test_report_writes_the_against_table(grid, capsys):
    assert main(["report", str(grid)]) == 0
    table = (grid / "results.md").read_text()
    mean, low, high = interval([-2.0, -3.0, -1.5])
    assert (
        f"| RigL-DM | 0.5 | 0.1 | Static-DM, S = 0.5 | FID | 3 | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | better |"
        in table
    )
    assert "| MagRan-DM | 0.9 | 0.05 | p = 0.2 | FID | 3 | +0.67 |" in table
    assert "Against: each dynamic configuration" in table


@pytest.fixture
def longer(tmp_path, grid):
    """The grid's Dense and RigL-DM trained 4x longer, plus a configuration the grid lacks."""
    sweep = tmp_path / "longer"
    runs(sweep, "dense", "dense", [8.0, 9.0, 10.0], train_steps=2400)
    runs(sweep, "rigl-S0.5-p0.1", "rigl", [12.0, 14.5, 13.0], sparsity=0.5, train_steps=2400)
    runs(sweep, "rigl-S0.75-p0.1", "rigl", [30.0, 31.0, 32.0], sparsity=0.75, train_steps=2400)
    return sweep


def test_across_sweeps_pairs_each_configuration_and_its_gap_to_dense(grid, longer):
    changes = across_sweeps(aggregate(read_runs(grid)), aggregate(read_runs(longer)))
    assert [key(c) for c in changes] == [("dense", None, None), ("rigl", 0.5, 0.1)]  # in both sweeps only
    dense, rigl = changes
    assert dense.change.mean == pytest.approx(-3.0) and dense.gap_change is None
    mean, low, high = interval([-6.0, -7.5, -6.5])  # RigL-DM longer minus RigL-DM in the grid
    assert (rigl.change.mean, rigl.change.ci_low, rigl.change.ci_high) == (
        pytest.approx(mean),
        pytest.approx(low),
        pytest.approx(high),
    )
    # gaps to Dense: grid 8, 10, 5.5; longer 4, 5.5, 3; change -4, -4.5, -2.5
    mean, low, high = interval([-4.0, -4.5, -2.5])
    gap = rigl.gap_change
    assert (gap.n, gap.mean, gap.ci_low, gap.ci_high) == (
        3,
        pytest.approx(mean),
        pytest.approx(low),
        pytest.approx(high),
    )
    assert gap.verdict == "better"


def test_compare_command_names_what_differs_and_prints_both_tables(grid, longer, capsys):
    assert main(["compare", str(grid), str(longer)]) == 0
    out = capsys.readouterr().out
    assert "B differs from A in: train_steps 600 -> 2400." in out
    assert "| RigL-DM | 0.5 | 0.1 | 19.83 | 13.17 | 3 | -6.67 |" in out
    assert "| RigL-DM | 0.5 | 0.1 | +7.83 | +4.17 | 3 | -3.67 |" in out
    assert "S = 0.75" not in out and "| RigL-DM | 0.75 |" not in out
    # made-up runs record no provenance: both sweeps say so
    assert (
        "A: Runs trained at: unrecorded (18 runs). Runs scored at: unrecorded (18 runs).\nB: Runs trained at: unrecorded (9"
        in out
    )


def test_compare_refuses_sweeps_without_a_common_configuration(tmp_path, grid, capsys):
    other = tmp_path / "other"
    runs(other, "static-S0.25", "static", [50.0], sparsity=0.25)
    assert main(["compare", str(grid), str(other)]) == 2
    assert "no configuration (method, S, p) in common" in capsys.readouterr().err
    assert main(["compare", str(grid), str(tmp_path / "missing")]) == 2
    assert "holds no evaluated run" in capsys.readouterr().err
