"""Learning curves in `sparsedm report`: per-step pairing with Dense, equal-FLOPs pairs and memorisation, on
made-up run folders scored at several steps, with answers worked out by hand; and the provenance line."""

import json
import logging
import math

import pytest
from test_sweep_aggregate import fake_run

from sparsedm.experiments.curves import SECONDS, equal_cost_pairs, read_curve_records, rows_by_step
from sparsedm.experiments.report import build_report

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)
STEPS = (1000, 2000, 4000)


def curve_run(sweep, name, method, fids, seed, sparsity=0.0, near_copy=0.0, commit="a" * 40, explored=None, cpu_s=None):
    """A run scored at STEPS (FIDs in that order): RUN/eval/step_*.json and eval.json, as the sweep leaves them;
    `cpu_s`: its training CPU seconds at each of STEPS (None: a run trained before they were recorded)."""
    fake_run(sweep, name, method, fids[-1], sparsity=sparsity, seed=seed)
    folder = sweep / "runs" / name
    final = json.loads((folder / "eval.json").read_text())
    (folder / "eval").mkdir()
    for step, fid in zip(STEPS, fids):
        record = {
            **final,
            "fid": fid,
            "step": step,
            "train_steps": STEPS[-1],
            "flops_train_total": final["flops_train_step"] * 64 * step,
            "fid_train": fid - 1.0,
            "train_size": 100,
            "near_copy": near_copy * step / 1000,
            "near_copy_pixels": near_copy / 2,
            "near_copy_heldout": 0.01,
            "near_copy_heldout_pixels": 0.02,
            "near_copy_rule": "the rule",
            "exploration_rate": explored,
            "provenance": {"git_commit": commit, "git_dirty": False},
            "train_provenance": {"git_commit": commit, "git_dirty": False},
            "train_cpu_s": None if cpu_s is None else cpu_s[STEPS.index(step)],
        }
        (folder / "eval" / f"step_{step:08d}.json").write_text(json.dumps(record))
        if step == STEPS[-1]:
            (folder / "eval.json").write_text(json.dumps(record))


DENSE = {0: [60.0, 50.0, 40.0], 1: [62.0, 52.0, 41.0], 2: [64.0, 54.0, 45.0]}
STATIC = {0: [80.0, 55.0, 48.0], 1: [82.0, 56.0, 50.0], 2: [84.0, 60.0, 51.0]}


@pytest.fixture
def sweep(tmp_path):
    for seed in range(3):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", DENSE[seed], seed, near_copy=0.1)
        curve_run(tmp_path, f"static-S0.5-seed{seed}", "static", STATIC[seed], seed, sparsity=0.5, explored=0.5)
    return tmp_path


def interval(differences):
    n = len(differences)
    mean = sum(differences) / n
    half = T_975_2 * math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    return pytest.approx(mean), pytest.approx(mean - half), pytest.approx(mean + half)


def test_each_step_pairs_with_dense_at_the_same_step(sweep):
    by_step = rows_by_step(read_curve_records(sweep))
    assert list(by_step) == list(STEPS)
    static = next(row for row in by_step[2000] if row.method == "static")
    assert static.fid_by_seed == {0: 55.0, 1: 56.0, 2: 60.0} and static.fid_mean == pytest.approx(57.0)
    # 55 - 50, 56 - 52, 60 - 54
    assert (static.delta_mean, static.delta_ci_low, static.delta_ci_high) == interval([5.0, 4.0, 6.0])
    assert static.verdict == "worse"


def test_equal_cost_pairs_take_the_dense_points_on_either_side(sweep):
    pairs = {(pair.step, pair.base_step): pair for pair in equal_cost_pairs(read_curve_records(sweep))}
    # Static-DM at S = 0.5 spends half of Dense's FLOPs per step: its step 1000 = Dense's 500, below Dense's first
    # point (so only the point above), 2000 = Dense's 1000, 4000 = Dense's 2000; Dense's last point (4000) spent
    # more than any sparse point, so nothing is paired above it
    assert sorted(pairs) == [(1000, 1000), (2000, 1000), (2000, 2000), (4000, 2000), (4000, 4000)]
    assert pairs[4000, 2000].base_cost == pytest.approx(pairs[4000, 2000].cost)
    assert pairs[4000, 4000].base_cost == pytest.approx(2 * pairs[4000, 4000].cost)
    result = pairs[4000, 2000].result  # 48 - 50, 50 - 52, 51 - 54: sparse at 4000 against Dense at 2000
    assert (result.mean, result.ci_low, result.ci_high) == interval([-2.0, -2.0, -3.0])
    assert result.verdict == "better" and pairs[4000, 2000].per_cost == "sparse ahead"
    # 55 - 60, 56 - 62, 60 - 64: sparse at 2000 against Dense at 1000, which spent as much
    assert pairs[2000, 1000].result.mean == pytest.approx(-5.0) and pairs[2000, 1000].per_cost == "sparse ahead"
    # 80 - 60, 82 - 62, 84 - 64: behind a Dense that spent twice as much says nothing per FLOP
    assert pairs[1000, 1000].result.verdict == "worse" and pairs[1000, 1000].per_cost == "–"
    # 48 - 40, 50 - 41, 51 - 45: worse than Dense at twice the FLOPs, again nothing per FLOP
    assert pairs[4000, 4000].result.verdict == "worse" and pairs[4000, 4000].per_cost == "–"


def test_a_sparse_point_behind_a_dense_point_that_spent_less_is_behind_per_flop():
    records = [
        {
            "method": "dense",
            "sparsity": 0.0,
            "prune_rate": None,
            "seed": seed,
            "step": step,
            "run": f"dense-seed{seed}",
            "fid": 50.0 - step / 1000 + seed,
            "flops_train_total": 1e12 * step / 1000,
        }
        for seed in range(3)
        for step in (1000, 2000)
    ]
    records += [
        {
            "method": "static",
            "sparsity": 0.5,
            "prune_rate": None,
            "seed": seed,
            "step": 4000,
            "run": f"static-S0.5-seed{seed}",
            "fid": 55.0 + seed + 0.1 * seed**2,
            "flops_train_total": 1.5e12,
        }
        for seed in range(3)
    ]
    below, above = equal_cost_pairs(records)
    # Dense at 1000 (1.0T, less than the sparse point's 1.5T) and at 2000 (2.0T, more)
    assert (below.base_step, above.base_step) == (1000, 2000)
    assert below.result.verdict == "worse" and below.per_cost == "Dense ahead"
    assert above.result.verdict == "worse" and above.per_cost == "–"


@pytest.mark.parametrize("share, partner", [(0.99998, 2000), (0.998, 1000)])
def test_a_dense_point_a_hair_above_counts_as_equal_flops(share, partner):
    # MagRan-DM at S = 0.5 in docs/curves.md spent 99.998% of Dense at half its steps: that is Dense's partner
    # (0.1% tolerance); 0.2% less is a real gap, and the partner is Dense's point before
    records = [
        {
            "method": "dense",
            "sparsity": 0.0,
            "prune_rate": None,
            "seed": 0,
            "step": step,
            "fid": 50.0 - step / 1000,
            "flops_train_total": 1e12 * step / 1000,
            "run": "dense-seed0",
        }
        for step in (1000, 2000)
    ]
    records.append(
        {
            "method": "static",
            "sparsity": 0.5,
            "prune_rate": None,
            "seed": 0,
            "step": 4000,
            "fid": 47.0,
            "flops_train_total": 2e12 * share,
            "run": "static-S0.5-seed0",
        }
    )
    pair = equal_cost_pairs(records)[0]  # the Dense point at or below; [1] would be the one above, if any
    assert pair.base_step == partner


def test_the_report_adds_curves_memorisation_and_provenance(sweep, caplog):
    report = build_report(sweep)
    text = report.markdown
    assert "## Learning curves" in text and "| 2000 | Static-DM | 0.5 | – | 57.00 ± 2.65 | – | 3 | 50.0% |" in text
    assert "| 2000 | Static-DM | 0.5 | – | Dense | FID | 3 | +5.00" in text
    assert (
        "### Equal training FLOPs" in text
        and "## Memorisation" in text
        and "| Static-DM | 0.5 | – | 4000 |" in text
        and "| 2000 | " in text
    )
    # memorisation: Dense's near-copy share grows with the step (0.1 per 1,000 steps), the baseline is stated
    assert "| 4000 | Dense | – | – | 42.00 | 41.00 | – | – | 40.0% | 5.0% |" in text
    assert "Baseline: 1.0% (Inception) and 2.0% (pixels)" in text
    assert "Runs trained at: aaaaaaaaaa (6 runs). Runs scored at: aaaaaaaaaa (6 runs)." in text
    names = {path.name for path in report.files}
    assert {"fid_vs_step.png", "fid_vs_train_flops.png", "memorisation_vs_step.png"} <= names
    assert all(path.stat().st_size > 0 for path in report.files)
    # a run scored by other code is named in one warning line
    curve_run(sweep, "dense-seed3", "dense", [61.0, 51.0, 41.0], 3, commit="b" * 40)
    with caplog.at_level(logging.WARNING, logger="sparsedm.experiments.aggregate"):
        text = build_report(sweep).markdown
    assert "aaaaaaaaaa (6 runs), bbbbbbbbbb (1 run)" in text
    warnings = [r.getMessage() for r in caplog.records if "different commits" in r.getMessage()]
    assert len(warnings) == 2 and "\n" not in warnings[0]


def test_the_memorisation_plot_shows_both_near_copy_shares_with_their_baselines(sweep, tmp_path, monkeypatch):
    from sparsedm.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi: figures.append(figure) or path)
    plots.memorisation_vs_step(read_curve_records(sweep), tmp_path / "m.png")
    gap, inception, pixels = figures[0].axes
    dense = {axes: next(line for line in axes.get_lines() if line.get_label() == "Dense") for axes in figures[0].axes}
    assert list(dense[gap].get_ydata()) == pytest.approx([1.0, 1.0, 1.0])  # fid - fid_train
    # Dense: near_copy = 0.1 * step / 1000 in Inception features, 0.05 in pixels; baselines 1% and 2%
    assert list(dense[inception].get_ydata()) == pytest.approx([10.0, 20.0, 40.0])
    assert list(dense[pixels].get_ydata()) == pytest.approx([5.0, 5.0, 5.0])
    for axes, baseline in ((inception, 1.0), (pixels, 2.0)):
        line = next(line for line in axes.get_lines() if line.get_label() == "held-out items")
        assert list(line.get_ydata()) == pytest.approx([baseline, baseline])
    assert "pixels" in pixels.get_ylabel() and "Inception" in inception.get_ylabel()


def test_the_cost_plots_name_their_axis_and_list_configurations_in_the_tables_order(sweep, tmp_path, monkeypatch):
    from sparsedm.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi: figures.append(figure) or path)
    curve_run(sweep, "magran-S0.5-p0.1-seed0", "magran", [70.0, 60.0, 50.0], 0, sparsity=0.5)
    records = read_curve_records(sweep)
    plots.fid_vs_cumulative_flops(records, tmp_path / "f.png")
    plots.fid_vs_cumulative_seconds([{**r, "train_cpu_s": r["step"] * 0.1} for r in records], tmp_path / "s.png")
    flops, seconds = (figure.axes[0] for figure in figures)
    # the x axis names its cost, not the last configuration drawn
    assert flops.get_xlabel() == "cumulative training FLOPs"
    assert seconds.get_xlabel() == "training CPU seconds"
    # as in the tables: Static-DM before MagRan-DM, though "magran-*" sorts first by run name
    labels = [text.get_text() for text in flops.get_legend().get_texts()]
    assert labels == ["Dense", "Static-DM, S = 0.5", "MagRan-DM, S = 0.5, p = 0.1"]


def test_a_sweep_scored_once_has_no_curve_section(tmp_path):
    for seed, fid in enumerate([10.0, 12.0]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", fid, seed=seed)
    report = build_report(tmp_path)
    assert "Learning curves" not in report.markdown and "fid_vs_step.png" not in {p.name for p in report.files}
    assert "Runs trained at: unrecorded (2 runs)." in report.markdown


def test_equal_seconds_pairs_split_the_seeds_whose_dense_partners_are_at_different_steps(tmp_path):
    # Dense seeds 0 and 1 spend 100 CPU s per 1,000 steps; seed 2 ran on a faster moment: 70 per 1,000. Static-DM
    # spends 150 s to its step 2000 (seed 2 115 s): its partner below is Dense's 1000 for seeds 0 and 1 (100 s) but
    # Dense's 1000 for seed 2 too (70 s; its 2000 is 140 s, above 115); above, Dense's 2000 for every seed
    dense_cpu = {0: [100.0, 200.0, 400.0], 1: [100.0, 200.0, 400.0], 2: [70.0, 140.0, 280.0]}
    static_cpu = {0: [75.0, 150.0, 300.0], 1: [75.0, 150.0, 300.0], 2: [60.0, 115.0, 230.0]}
    for seed in range(3):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", DENSE[seed], seed, cpu_s=dense_cpu[seed])
        curve_run(
            tmp_path, f"static-S0.5-seed{seed}", "static", STATIC[seed], seed, sparsity=0.5, cpu_s=static_cpu[seed]
        )
    pairs = [p for p in equal_cost_pairs(read_curve_records(tmp_path), SECONDS) if p.score == "FID"]
    at_2000 = {p.base_step: p for p in pairs if p.step == 2000}
    assert sorted(at_2000) == [1000, 2000]
    assert at_2000[1000].base_cost == pytest.approx(90.0) and at_2000[2000].base_cost == pytest.approx(180.0)
    assert at_2000[1000].cost == pytest.approx((150 + 150 + 115) / 3) and at_2000[1000].result.n == 3
    # step 4000: seeds 0 and 1 (300 s) pair below with Dense's 2000 (200 s), seed 2 (230 s) with its 2000 (140 s):
    # the same step; above, seeds 0 and 1 with Dense's 4000 (400 s) and seed 2 with its 4000 (280 s)
    at_4000 = sorted((p.base_step, p.result.n) for p in pairs if p.step == 4000)
    assert at_4000 == [(2000, 3), (4000, 3)]
    # step 1000: seed 2 (60 s) is below its Dense's first point (70 s), seeds 0 and 1 (75 s) below theirs (100 s):
    # only the points above, Dense's 1000 for all
    assert sorted((p.base_step, p.result.n) for p in pairs if p.step == 1000) == [(1000, 3)]
    report = build_report(tmp_path)
    assert "### Equal training CPU seconds" in report.markdown and "| Per CPU-second |" in report.markdown
    assert "fid_vs_train_seconds.png" in {path.name for path in report.files}


def test_seeds_whose_partners_are_at_different_steps_make_one_pair_per_step(tmp_path):
    dense_cpu = {0: [100.0, 200.0, 400.0], 1: [100.0, 200.0, 400.0], 2: [50.0, 100.0, 200.0]}
    for seed in range(3):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", DENSE[seed], seed, cpu_s=dense_cpu[seed])
        curve_run(
            tmp_path, f"static-S0.5-seed{seed}", "static", STATIC[seed], seed, sparsity=0.5, cpu_s=[75.0, 150.0, 300.0]
        )
    pairs = [p for p in equal_cost_pairs(read_curve_records(tmp_path), SECONDS) if p.score == "FID" and p.step == 2000]
    # below 150 s: seeds 0 and 1 at Dense's 1000 (100 s), seed 2 at its 2000 (100 s); above: 2000 and 4000
    below = sorted((p.base_step, p.result.n) for p in pairs if p.base_cost <= p.cost)
    assert below == [(1000, 2), (2000, 1)]
    assert sorted((p.base_step, p.result.n) for p in pairs if p.base_cost > p.cost) == [(2000, 2), (4000, 1)]


def test_a_sweep_without_recorded_seconds_has_no_seconds_section(sweep):
    report = build_report(sweep)
    assert "Equal training CPU seconds" not in report.markdown
    assert "fid_vs_train_seconds.png" not in {path.name for path in report.files}
