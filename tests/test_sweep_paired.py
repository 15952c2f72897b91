"""Paired statistics of `sparsedm report`: per-seed differences to Dense, their t interval and the verdict,
checked on made-up run folders whose answers are worked out by hand."""

import csv
import math

import pytest
from test_sweep_aggregate import fake_run

from sparsedm.cli import main
from sparsedm.experiments.aggregate import aggregate, read_runs
from sparsedm.experiments.paired import PairedDifference, holm, paired_difference

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


@pytest.fixture
def sweep(tmp_path):
    for seed, fid in enumerate([10.0, 12.0, 14.0]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", fid, seed=seed)
    for seed, fid in enumerate([8.0, 10.0, 12.5]):  # differences -2, -2, -1.5: better in every seed
        fake_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", fid, sparsity=0.5, seed=seed)
    fake_run(tmp_path, "rigl-S0.5-p0.1-seed3", "rigl", 99.0, sparsity=0.5, seed=3)  # no Dense of seed 3
    for seed, fid in enumerate([20.0, 13.0, 14.0]):  # differences 10, 1, 0: spread too wide to tell
        fake_run(tmp_path, f"static-S0.9-seed{seed}", "static", fid, sparsity=0.9, seed=seed)
    for seed, fid in enumerate([15.0, 17.0, 19.5]):  # differences 5, 5, 5.5: worse in every seed
        fake_run(tmp_path, f"magran-S0.9-p0.1-seed{seed}", "magran", fid, sparsity=0.9, seed=seed)
    fake_run(tmp_path, "rigl-S0.9-p0.05-seed0", "rigl", 11.0, sparsity=0.9, prune_rate=0.05, seed=0)
    return tmp_path


def by_name(rows):
    return {(r.method, r.sparsity, r.prune_rate): r for r in rows}


def test_paired_differences_intervals_and_verdicts(sweep):
    rows = by_name(aggregate(read_runs(sweep)))
    rigl = rows["rigl", 0.5, 0.1]
    mean, sd = -11 / 6, math.sqrt(1 / 12)  # of -2, -2, -1.5
    half = T_975_2 * sd / math.sqrt(3)
    assert rigl.delta_n == 3  # seed 3 has no Dense partner
    assert rigl.delta_mean == pytest.approx(mean)
    assert (rigl.delta_ci_low, rigl.delta_ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert rigl.verdict == "better"
    assert rigl.fid_mean == pytest.approx((8 + 10 + 12.5 + 99) / 4)  # the unpaired mean keeps every seed

    static = rows["static", 0.9, None]
    assert static.delta_mean == pytest.approx(11 / 3) and static.verdict == "indistinguishable"
    assert static.delta_ci_low < 0 < static.delta_ci_high
    assert rows["magran", 0.9, 0.1].verdict == "worse"
    single = rows["rigl", 0.9, 0.05]
    assert (single.delta_n, single.delta_mean, single.delta_ci_low, single.verdict) == (
        1,
        pytest.approx(1.0),
        None,
        "n/a (< 2 paired seeds)",
    )
    assert rows["dense", None, None].verdict is None


def test_pairing_is_by_seed_not_by_order():
    dense = {0: 10.0, 1: 20.0, 2: 30.0}
    shuffled = {2: 29.0, 0: 9.0, 1: 19.0}  # one below Dense in every seed
    result = paired_difference(shuffled, dense)
    assert result.mean == pytest.approx(-1.0) and result.ci_low == pytest.approx(-1.0)
    assert result.verdict == "better"  # zero spread: the interval is the point -1
    assert paired_difference({0: 1.0}, {1: 2.0}).n == 0


def test_report_writes_the_paired_table_and_per_seed_fids(sweep, capsys):
    assert main(["report", str(sweep)]) == 0
    table = (sweep / "results.md").read_text()
    header = "| Method | S | p | Against | Score | Paired seeds | Δ | 95% CI | Verdict | Holm p | Holm verdict |"
    assert header in table
    mean, half = -11 / 6, T_975_2 * math.sqrt(1 / 12) / math.sqrt(3)
    rigl_line = (
        f"| RigL-DM | 0.5 | 0.1 | Dense | FID | 3 | {mean:+.2f} | [{mean - half:+.2f}, {mean + half:+.2f}] | better |"
    )
    assert rigl_line in table
    assert "| MagRan-DM | 0.9 | 0.1 | Dense | FID | 3 | +5.17 |" in table and "| worse |" in table
    # no Small-Dense runs here: the family is named for what it holds
    assert "Holm: verdicts adjusted over this table's family of comparisons with Dense, one family" in table
    assert "Small-Dense" not in table
    assert "split; no KID (the runs were scored before it); mean ± sample std" in table  # none of them has one
    with open(sweep / "results.csv") as file:
        rows = {(r["method"], r["sparsity"], r["prune_rate"]): r for r in csv.DictReader(file)}
    rigl = rows["rigl", "0.5", "0.1"]
    assert [rigl[f"fid_seed{s}"] for s in range(4)] == ["8.0", "10.0", "12.5", "99.0"]
    assert rows["dense", "", ""]["fid_seed3"] == "" and rows["dense", "", ""]["verdict"] == ""
    assert rigl["verdict"] == "better" and float(rigl["delta_ci_high"]) == pytest.approx(mean + half)


def test_p_value_is_the_paired_t_tests_and_agrees_with_the_interval():
    from scipy.stats import ttest_rel

    config, dense = {0: 8.0, 1: 10.0, 2: 12.5}, {0: 10.0, 1: 12.0, 2: 14.0}
    result = paired_difference(config, dense)
    assert result.p_value == pytest.approx(ttest_rel([8.0, 10.0, 12.5], [10.0, 12.0, 14.0]).pvalue, rel=1e-12)
    assert result.p_value < 0.05 and result.verdict == "better"
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p_value == 1.0  # no difference, no spread
    assert paired_difference({0: 8.0}, {0: 9.0}).p_value is None


def test_holm_adjusts_as_by_hand():
    # m = 4 p-values 0.01, 0.04, 0.03, 0.2, sorted 0.01 < 0.03 < 0.04 < 0.2: 4 x 0.01 = 0.04, 3 x 0.03 = 0.09,
    # 2 x 0.04 = 0.08 raised to 0.09 (adjusted p-values never fall with rank), 1 x 0.2 = 0.2
    results = [PairedDifference(3, -1.0, -2.0, -0.5, "better", p) for p in (0.01, 0.04, 0.03, 0.2)]
    untested = PairedDifference(1, -1.0, None, None, "n/a (< 2 paired seeds)")
    adjusted = holm([*results, untested])
    assert [r.holm_p for r in adjusted[:4]] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert [r.holm_verdict for r in adjusted[:4]] == ["better"] + ["indistinguishable"] * 3
    assert adjusted[4] == untested  # no p: not in the family, not adjusted
    assert holm([results[0]])[0].holm_p == pytest.approx(0.01)  # a family of one is not adjusted


def test_the_report_prints_holm_beside_each_verdict_over_its_table(sweep):
    from scipy.stats import ttest_rel

    assert main(["report", str(sweep)]) == 0
    table = (sweep / "results.md").read_text()
    # the family: RigL-DM S = 0.5, Static-DM S = 0.9 and MagRan-DM S = 0.9 against Dense (RigL-DM S = 0.9 p = 0.05
    # has one paired seed, so no p); smallest p first
    p = {
        "rigl": ttest_rel([8.0, 10.0, 12.5], [10.0, 12.0, 14.0]).pvalue,
        "static": ttest_rel([20.0, 13.0, 14.0], [10.0, 12.0, 14.0]).pvalue,
        "magran": ttest_rel([15.0, 17.0, 19.5], [10.0, 12.0, 14.0]).pvalue,
    }
    ranked = sorted(p, key=p.get)
    adjusted, running = {}, 0.0
    for rank, name in enumerate(ranked):
        running = max(running, min(1.0, (3 - rank) * p[name]))
        adjusted[name] = running
    rigl_line = next(line for line in table.splitlines() if line.startswith("| RigL-DM | 0.5 | 0.1 | Dense | FID"))
    verdict = "better" if adjusted["rigl"] < 0.05 else "indistinguishable"
    assert rigl_line.endswith(f"| better | {adjusted['rigl']:.3g} | {verdict} |")
    assert "family of comparisons with Dense, one family per score (3 by FID;" in table


def test_sampling_seeds_are_averaged_within_a_training_seed_and_their_spread_shown(tmp_path):
    # Dense scored once per training seed; RigL-DM with 3 sampling seeds, whose mean is its FID
    for seed, fid in enumerate([10.0, 12.0, 14.0]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", fid, seed=seed)
    sampled = {0: [8.0, 9.0, 10.0], 1: [10.0, 11.0, 12.0], 2: [11.0, 12.5, 14.0]}  # means 9, 11, 12.5
    for seed, fids in sampled.items():
        fake_run(
            tmp_path,
            f"rigl-S0.5-p0.1-seed{seed}",
            "rigl",
            sum(fids) / 3,
            sparsity=0.5,
            seed=seed,
            sampling_seeds=[0, 1, 2],
            fid_by_sampling_seed=fids,
        )
    rows = by_name(aggregate(read_runs(tmp_path)))
    rigl = rows["rigl", 0.5, 0.1]
    # within-run variances 1, 1, 2.25: pooled std sqrt(4.25 / 3)
    assert rigl.fid_sampling_std == pytest.approx(math.sqrt(4.25 / 3)) and rigl.sampling_seeds == 3
    # the interval rests on the three per-training-seed means: differences -1, -1, -1.5
    expected = paired_difference({0: 9.0, 1: 11.0, 2: 12.5}, {0: 10.0, 1: 12.0, 2: 14.0})
    assert (rigl.delta_n, rigl.delta_ci_low, rigl.delta_ci_high) == (3, expected.ci_low, expected.ci_high)
    assert rows["dense", None, None].fid_sampling_std is None
    assert main(["report", str(tmp_path)]) == 0
    assert f"| 10.83 ± 1.76 (sampling ± {math.sqrt(4.25 / 3):.2f}, 3 seeds) |" in (tmp_path / "results.md").read_text()
