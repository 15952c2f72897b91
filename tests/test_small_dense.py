"""Small-Dense: the dense baseline narrowed to a sparse model's non-zero count (tasks/width.py), in the config,
the sweep grid and the report (pairing with the sparse configurations of its S, per step and at equal FLOPs),
checked on tiny models and on made-up run folders whose answers are worked out by hand."""

import json

import pytest
import torch
from test_sweep_aggregate import F_DENSE, fake_run
from test_sweep_curves import curve_run
from tiny_models import tiny_chirodiff

from sparsedm.config import load_config
from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import aggregate, read_runs
from sparsedm.experiments.curves import equal_cost_pairs, read_curve_records
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.report import build_report
from sparsedm.models.unet import UNetConfig, allowed_base_channels
from sparsedm.tasks import build_task
from sparsedm.tasks.width import nonzero_at, parameter_count

CONFIG = "configs/chirodiff_kanjivg_cpu.yaml"


def small_dense_task(sparsity, *extra):
    return build_task(
        load_config(CONFIG, [*tiny_chirodiff(), "sparse.method=dense", f"small_dense={sparsity}", *extra])
    )


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_the_width_is_the_allowed_one_nearest_the_sparse_non_zero_count(sparsity):
    task = small_dense_task(sparsity)
    matched = task.matched_width()
    full = build_task(load_config(CONFIG, tiny_chirodiff())).build_model()
    target = nonzero_at(full, load_config(CONFIG, tiny_chirodiff()).sparse, sparsity)
    # the engine's own count: a Static-DM run of the same config at S
    assert matched.target == target and matched.full_params == parameter_count(full)
    counts = {width: parameter_count(task.build_denoiser(width)) for width in task.widths()}
    best = min(counts, key=lambda width: abs(counts[width] - target))
    assert (matched.width, matched.params) == (best, counts[best]) and matched.full_width == 16
    assert parameter_count(task.build_model()) == matched.params
    assert matched.ratio == pytest.approx(matched.params / target)
    assert matched.record()["ratio"] == matched.ratio


def test_the_width_search_leaves_the_models_initialisation_alone():
    task = small_dense_task(0.5)
    torch.manual_seed(7)
    searched = task.build_model()  # searches first, then builds
    torch.manual_seed(7)
    direct = task.build_denoiser(task.matched_width().width)
    assert all(torch.equal(a, b) for a, b in zip(searched.state_dict().values(), direct.state_dict().values()))


def test_unet_widths_are_those_its_group_norms_and_heads_divide():
    cfg = UNetConfig(base_channels=48, channel_mult=[1, 2], norm_num_groups=4, attention_head_dim=8)
    assert allowed_base_channels(cfg) == [8, 16, 24, 32, 40, 48]
    # the study's UNet (configs/study_openmoji.yaml): 16 groups, heads of 16 channels
    cfg = UNetConfig(base_channels=48, channel_mult=[1, 2], norm_num_groups=16, attention_head_dim=16)
    assert allowed_base_channels(cfg) == [16, 32, 48]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sparse.method=rigl", "small_dense=0.5"], "set sparse.method=dense"),
        (["sparse.method=dense", "small_dense=1.5"], r"must be an S in \(0, 1\)"),
    ],
)
def test_bad_small_dense_settings_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(CONFIG, overrides)


def test_a_width_that_cannot_narrow_is_refused():
    # S = 0.01 keeps nearly every weight: no narrower GRU comes closer than the full one
    with pytest.raises(UserError, match="no narrower model comes closer"):
        small_dense_task(0.01).matched_width()


def test_the_grid_runs_small_dense_once_per_s_and_seed_as_a_dense_run():
    grid = SweepGrid(methods=["rigl", "small-dense", "dense"], sparsities=[0.9, 0.5], prune_rates=[0.1], seeds=1)
    specs = grid.runs()
    assert [spec.name for spec in specs] == [
        "dense-seed0",
        "small-dense-S0.5-seed0",
        "small-dense-S0.9-seed0",
        "rigl-S0.5-p0.1-seed0",
        "rigl-S0.9-p0.1-seed0",
    ]
    assert specs[1].overrides() == ["sparse.method=dense", "small_dense=0.5", "seed=0", "sparse.seed=0"]
    cfg = load_config(CONFIG, specs[1].overrides())
    assert cfg.sparse.method == "dense" and cfg.small_dense == 0.5


MATCHED = {"sparsity": 0.5, "width": 11, "full_width": 16, "full_params": 10_000, "params": 4_800, "target": 5_500}


def small_dense_run(sweep, seed, fid, **changes):
    """A Small-Dense run: a Dense run with 4,800 parameters and 48% of Dense's FLOPs, matched to S = 0.5."""
    fake_run(
        sweep,
        f"small-dense-S0.5-seed{seed}",
        "dense",
        fid,
        seed=seed,
        params_total=4_800,
        params_nonzero=4_800,
        flops_forward_dense=0.48 * F_DENSE,
        flops_forward_sparse=0.48 * F_DENSE,
        flops_train_step=3 * 0.48 * F_DENSE,
        flops_train_step_dense=3 * 0.48 * F_DENSE,
        flops_train_total=3 * 0.48 * F_DENSE * 64 * 600,
        small_dense={**MATCHED, "ratio": 4_800 / 5_500},
        **changes,
    )


@pytest.fixture
def sweep(tmp_path):
    for seed, (dense, small, rigl) in enumerate([(10.0, 14.0, 12.0), (12.0, 15.0, 13.0), (14.0, 18.0, 15.5)]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", dense, seed=seed, kid=0.01 * dense)
        small_dense_run(tmp_path, seed, small, kid=0.01 * small)
        fake_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", rigl, sparsity=0.5, seed=seed, kid=0.01 * rigl)
    return tmp_path


def test_small_dense_is_a_row_of_its_real_size_paired_with_the_sparse_rows_of_its_s(sweep):
    rows = {row.method: row for row in aggregate(read_runs(sweep))}
    assert [row.method for row in aggregate(read_runs(sweep))] == ["dense", "small-dense", "rigl"]
    small, rigl = rows["small-dense"], rows["rigl"]
    assert (small.sparsity, small.prune_rate, small.width, small.full_width) == (0.5, None, 11, 16)
    # its parameters as a share of the full-width model, its FLOPs of the sweep's Dense
    assert small.params_rel == pytest.approx(0.48) and small.flops_forward_rel == pytest.approx(0.48)
    assert small.flops_train_rel == pytest.approx(0.48)
    assert small.params_target_ratio == pytest.approx(4_800 / 5_500)
    # RigL-DM - Small-Dense by seed: -2, -2, -2.5; Small-Dense - Dense: +4, +3, +4
    assert rigl.small_delta_mean == pytest.approx(-13 / 6) and rigl.small_verdict == "better"
    assert small.delta_mean == pytest.approx(11 / 3) and small.verdict == "worse"
    assert small.small_delta_n is None and rows["dense"].small_delta_n is None
    assert small.kid_mean == pytest.approx(0.01 * 47 / 3)


def test_the_report_pairs_with_dense_and_small_dense_by_fid_and_kid(sweep):
    text = build_report(sweep).markdown
    assert "| Small-Dense | 0.5 | – | 15.67 ± 2.08 | 0.1567 ± 0.0208 | 3 | 4.8k (48.0%) | 480k (48.0%) |" in text
    assert "S = 0.5: width 11 of 16, 4.8k parameters, 0.873 of the non-zero count of S = 0.5" in text
    for against, score, delta in [
        ("Dense", "FID", "+1.50"),
        ("Small-Dense", "FID", "-2.17"),
        ("Small-Dense", "KID", "-0.0217"),
    ]:
        assert f"| RigL-DM | 0.5 | 0.1 | {against} | {score} | 3 | {delta} |" in text
    assert "| Small-Dense | 0.5 | – | Dense | FID | 3 | +3.67 |" in text
    # three comparisons by FID and three by KID in the baselines' table, a family named for both baselines
    assert "family of comparisons with Dense and Small-Dense, one family per score (3 by FID, 3 by KID;" in text


def test_equal_cost_pairs_sparse_points_with_small_dense_of_their_s(tmp_path):
    # RigL-DM at S = 0.5 spends (75 + 2) / 51 / 3 = 50.3% of Dense per step; Small-Dense 48%, so at each
    # step RigL's partner below is Small-Dense at the same step, and above, Small-Dense at the next step
    for seed in range(3):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", [60.0 + seed, 50.0 + seed, 40.0 + seed], seed)
        curve_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", [70.0, 56.0 + seed, 45.0 + seed], seed, sparsity=0.5)
        curve_run(tmp_path, f"small-dense-S0.5-seed{seed}", "dense", [72.0, 50.0, 58.0 + seed / 2], seed)
        for path in (tmp_path / "runs" / f"small-dense-S0.5-seed{seed}").rglob("*.json"):
            record = json.loads(path.read_text())
            if "fid" in record:
                share = 0.48
                record.update(
                    small_dense={**MATCHED, "ratio": 4_800 / 5_500},
                    flops_train_total=record["flops_train_total"] * share,
                    flops_train_step=record["flops_train_step"] * share,
                )
                path.write_text(json.dumps(record))
    pairs = equal_cost_pairs(read_curve_records(tmp_path))
    small = {(p.step, p.base_step): p for p in pairs if p.against == "Small-Dense" and p.score == "FID"}
    assert sorted(small) == [(1000, 1000), (1000, 2000), (2000, 2000), (2000, 4000), (4000, 4000)]
    # (45 + s) - (58 + s / 2): better, but against a Small-Dense point that spent less: nothing per FLOP
    assert small[4000, 4000].result.mean == pytest.approx(-12.5) and small[4000, 4000].result.verdict == "better"
    assert small[4000, 4000].per_cost == "–"
    # (56 + s) - (58 + s / 2) = -2, -1.5, -1: better than Small-Dense at twice the steps, which spent more
    assert small[2000, 4000].result.mean == pytest.approx(-1.5) and small[2000, 4000].per_cost == "sparse ahead"
    # (56 + s) - 50: worse than Small-Dense at the same step, which spent less
    assert small[2000, 2000].per_cost == "Small-Dense ahead"
    dense = [p for p in pairs if p.against == "Dense"]
    assert dense and all(p.key == ("rigl", 0.5, 0.1, 1) for p in pairs)


def test_a_sweep_trains_and_scores_small_dense_at_its_width(tmp_path, capsys, monkeypatch):
    from fid_stub import use_pooled_pixels
    from test_sweep import tiny

    from sparsedm.cli import main
    from sparsedm.runs.run_dir import RunDir

    use_pooled_pixels(monkeypatch)
    out = tmp_path / "sweep"
    args = ["sweep", CONFIG, *tiny(tmp_path / "cache"), "--out", str(out), "--methods", "dense", "small-dense"]
    args += ["rigl", "--sparsities", "0.5", "--prune-rates", "0.1", "--seeds", "1", "--num", "4"]
    assert main([*args, "--sample-steps", "2", "--no-progress"]) == 0
    run = RunDir(out / "runs" / "small-dense-S0.5-seed0")
    summary, score = run.read_summary(), json.loads((run.path / "eval.json").read_text())
    assert summary["method"] == "dense" and score["small_dense"]["sparsity"] == 0.5
    # the run trained the narrowed model: its parameters are the matched count, not the config's width
    assert summary["params_total"] == score["small_dense"]["params"] < score["small_dense"]["full_params"]
    assert score["kid"] is not None and score["kid_std"] >= 0
    table = (out / "results.md").read_text()
    assert "| Small-Dense | 0.5 | – |" in table and "| RigL-DM | 0.5 | 0.1 | Small-Dense | FID | 1 |" in table


def test_the_primary_comparison_of_the_config_is_printed_first(sweep):
    from sparsedm.experiments.aggregate import SWEEP_FILE

    (sweep / SWEEP_FILE).write_text(
        json.dumps({"config": {"primary_comparison": "rigl-S0.5-p0.1 vs small-dense"}, "eval": {}})
    )
    text = build_report(sweep).markdown
    assert text.startswith("## Primary comparison: rigl-S0.5-p0.1 vs small-dense\n")
    first_table = text.split("## All configurations")[0]
    assert "| RigL-DM | 0.5 | 0.1 | Small-Dense | FID | 3 | -2.17 |" in first_table
    assert "| RigL-DM | 0.5 | 0.1 | Small-Dense | KID | 3 | -0.0217 |" in first_table
    assert "| Dense |" not in first_table.split("| Score |")[1]  # only the comparison it names
    assert "Holm p and verdict: over the family of the comparisons with Dense and Small-Dense below." in first_table


def test_a_malformed_primary_comparison_is_refused():
    with pytest.raises(UserError, match="is not '<configuration> vs <dense|small-dense>'"):
        load_config(CONFIG, ["primary_comparison=rigl S0.5 against dense"])


def test_the_small_dense_study_is_the_image_study_with_a_primary_comparison_and_the_widths_it_states():
    from sparsedm.config_loader import to_dict

    study = to_dict(
        load_config("configs/study_openmoji_small_dense.yaml", ["autoencoder.path=docs/data/images/autoencoder"])
    )
    images = to_dict(load_config("configs/study_openmoji.yaml", ["autoencoder.path=docs/data/images/autoencoder"]))
    assert (
        study.pop("primary_comparison") == "rigl-S0.5-p0.1 vs small-dense" and images.pop("primary_comparison") is None
    )
    assert study == images
    # the header's widths and ratios: base_channels 32 at S = 0.5 (0.869 of the target), 16 at S = 0.9 (0.914)
    for sparsity, width, ratio in ((0.5, 32, 0.869), (0.9, 16, 0.914)):
        overrides = ["autoencoder.path=docs/data/images/autoencoder", "sparse.method=dense", f"small_dense={sparsity}"]
        matched = build_task(load_config("configs/study_openmoji_small_dense.yaml", overrides)).matched_width()
        assert (matched.width, round(matched.ratio, 3)) == (width, ratio)


def test_a_sweep_scored_at_several_steps_with_kid_gets_its_kid_plot_and_tables(tmp_path):
    for seed in range(2):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", [60.0, 50.0 + seed, 40.0], seed)
        curve_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", [70.0, 56.0, 45.0 + seed], seed, sparsity=0.5)
    for path in (tmp_path / "runs").rglob("*.json"):
        record = json.loads(path.read_text())
        if "fid" in record:
            path.write_text(json.dumps({**record, "kid": record["fid"] / 1000, "kid_std": 0.001}))
    report = build_report(tmp_path)
    assert "kid_vs_train_flops.png" in {path.name for path in report.files}
    assert "| 4000 | RigL-DM | 0.5 | 0.1 | 45.50 ± 0.71 | 0.0455 ± 0.0007 | 2 |" in report.markdown
    assert "| 4000 | RigL-DM | 0.5 | 0.1 | Dense | KID | 2 | +0.0055 |" in report.markdown
    # the notes say what the tables hold: no ΔFID column per step, seconds only where compact kernels ran
    assert "## Learning curves\n\nEach scored step.\n" in report.markdown and "ΔFID pairs" not in report.markdown
    assert (
        "seconds are saved only by compact kernels (sparse.kernels), and only the CPU-seconds table" in report.markdown
    )
