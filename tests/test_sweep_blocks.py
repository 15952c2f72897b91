"""Block size as a sweep dimension (`--block-sizes`, sparse.block_size): the grid's names and overrides, and a
report pairing block-structured rows by seed with unstructured ones, on made-up run folders whose answers are
worked out by hand; and the kept reports of docs/data, which have no block rows, read as before."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from test_small_dense import CONFIG, small_dense_run
from test_sweep_aggregate import fake_run
from test_sweep_comparisons import interval
from test_sweep_curves import curve_run

from sparsedm.cli import main
from sparsedm.config import PRIMARY_COMPARISON
from sparsedm.errors import UserError
from sparsedm.eval.evaluate import EvalSettings
from sparsedm.experiments import plots
from sparsedm.experiments.aggregate import SWEEP_FILE, aggregate, read_runs
from sparsedm.experiments.curves import equal_cost_pairs, read_curve_records, rows_by_step
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.report import build_report
from sparsedm.experiments.shards import in_slice
from sparsedm.experiments.sweep import pin_setup, resolve_grid, run_sweep, sweep_setup


def test_block_sizes_span_the_sparse_methods_and_name_only_tiled_runs():
    grid = SweepGrid(["rigl", "small-dense", "static", "dense"], [0.9], [0.1], seeds=2, block_sizes=[16, 1])
    specs = grid.runs()
    names = [spec.name for spec in specs]
    assert names == [
        *(
            f"{name}-seed{seed}"
            for seed in (0, 1)
            for name in ("dense", "small-dense-S0.9", "static-S0.9", "static-S0.9-b16", "rigl-S0.9-p0.1")
            + ("rigl-S0.9-p0.1-b16",)
        )
    ]
    by_name = {spec.name: spec.overrides() for spec in specs}
    assert "sparse.block_size=16" in by_name["rigl-S0.9-p0.1-b16-seed0"]
    assert "sparse.block_size=1" in by_name["rigl-S0.9-p0.1-seed0"]
    assert "sparse.block_size=16" in by_name["static-S0.9-b16-seed1"]
    # Dense and Small-Dense run once per seed (and S), at the config's block size: no mask to tile
    assert not any("block_size" in o for name in ("dense-seed0", "small-dense-S0.9-seed0") for o in by_name[name])
    # slices of the grid still cover it once, in its order
    assert [s.name for k in range(3) for s in in_slice(specs, (k, 3))] == names[0::3] + names[1::3] + names[2::3]


def test_without_block_sizes_the_grid_takes_the_configs_and_old_names_stay():
    grid = SweepGrid(["dense", "rigl"], [0.5], [0.1], seeds=1)
    assert [spec.name for spec in grid.runs()] == ["dense-seed0", "rigl-S0.5-p0.1-seed0"]
    assert [spec.name for spec in resolve_grid(grid, CONFIG, []).runs()] == ["dense-seed0", "rigl-S0.5-p0.1-seed0"]
    tiled = resolve_grid(grid, CONFIG, ["sparse.block_size=4"]).runs()
    assert [spec.name for spec in tiled] == ["dense-seed0", "rigl-S0.5-p0.1-b4-seed0"]
    assert "sparse.block_size=4" in tiled[1].overrides()


@pytest.mark.parametrize("sizes", [[0], [], [1, -16]])
def test_a_block_size_below_one_is_refused_in_one_line(sizes):
    with pytest.raises(UserError, match=r"^--block-sizes .*: each b must be an integer >= 1 \(1: unstructured\)$"):
        SweepGrid(["rigl"], [0.5], [0.1], seeds=1, block_sizes=sizes).runs()


def test_the_cli_takes_block_sizes_and_refuses_them_as_an_override(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", CONFIG, "--out", str(out), "--methods", "rigl", "--sparsities", "0.5", "--prune-rates", "0.1"]
    assert main([*args, "--seeds", "1", "--block-sizes", "1", "8", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "rigl-S0.5-p0.1-seed0" in listed and "rigl-S0.5-p0.1-b8-seed0" in listed
    assert main([*args, "--block-sizes", "0", "--list"]) == 2
    assert "--block-sizes [0]: each b must be" in capsys.readouterr().err
    with pytest.raises(UserError, match="the grid sets these; use .*--block-sizes and --seeds$"):
        run_sweep(CONFIG, out, SweepGrid(["rigl"], [0.5], [0.1], seeds=1), ["sparse.block_size=16"])


def test_a_sweep_started_when_block_size_was_pinned_at_one_continues(tmp_path):
    setup = sweep_setup(CONFIG, [], EvalSettings())
    assert "block_size" not in setup["config"]["sparse"]  # a grid key: each run's own
    for pinned, accepted in ((1, True), (16, False)):
        out = tmp_path / str(pinned)
        out.mkdir()
        old = json.loads(json.dumps(setup))
        old["config"]["sparse"]["block_size"] = pinned
        (out / SWEEP_FILE).write_text(json.dumps(old))
        if accepted:
            pin_setup(out, setup)
        else:  # its runs were tiled but named without -b16: not the grid's
            with pytest.raises(UserError, match="config.sparse.block_size=16"):
                pin_setup(out, setup)


# FID by seed: RigL-DM unstructured, the same at 16 x 16 tiles: the tiles cost +2, +3, +2.5
UNSTRUCTURED, TILED = [12.0, 13.0, 15.5], [14.0, 16.0, 18.0]


@pytest.fixture
def sweep(tmp_path):
    for seed, (dense, small) in enumerate([(10.0, 14.0), (12.0, 15.0), (14.0, 18.0)]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", dense, seed=seed, kid=0.01 * dense)
        small_dense_run(tmp_path, seed, small, kid=0.01 * small)
        # an unstructured run scored before eval.json recorded the block size, beside one that records it
        fid = UNSTRUCTURED[seed]
        fake_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", fid, sparsity=0.5, seed=seed, kid=0.01 * fid)
        fid = TILED[seed]
        name = f"rigl-S0.5-p0.1-b16-seed{seed}"
        fake_run(tmp_path, name, "rigl", fid, sparsity=0.5, seed=seed, kid=0.01 * fid, block_size=16)
    return tmp_path


def test_tiled_rows_are_their_own_and_pair_with_dense_and_small_dense(sweep):
    rows = aggregate(read_runs(sweep))
    assert [(row.method, row.block_size) for row in rows] == [
        ("dense", None),
        ("small-dense", None),
        ("rigl", 1),
        ("rigl", 16),
    ]
    tiled = rows[3]
    assert tiled.fid_by_seed == dict(enumerate(TILED))
    # against Small-Dense of S = 0.5 (14, 15, 18): 0, +1, 0; against Dense (10, 12, 14): +4, +4, +4
    assert tiled.small_delta_mean == pytest.approx(1 / 3) and tiled.delta_mean == pytest.approx(4.0)


def test_the_report_pairs_blocks_with_unstructured_by_seed(sweep):
    report = build_report(sweep)
    text = report.markdown
    assert "| Method | S | p | Blocks | FID ↓ |" in text
    assert "| RigL-DM | 0.5 | 0.1 | 16 x 16 | 16.00 ± 2.00 |" in text
    assert "| RigL-DM | 0.5 | 0.1 | unstructured | 13.50 ± 1.80 |" in text and "| Dense | – | – | – | 12.00" in text
    mean, low, high = interval([t - u for t, u in zip(TILED, UNSTRUCTURED)])  # +2.5 [+1.26, +3.74]
    fid = f"| RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | unstructured | FID | 3 | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] "
    assert fid + "| worse |" in text
    kid_mean, kid_low, kid_high = (0.01 * v for v in (mean, low, high))
    kid = f"| unstructured | KID | 3 | {kid_mean:+.4f} | [{kid_low:+.4f}, {kid_high:+.4f}] | worse |"
    assert kid in text
    # one comparison per score in its own family: Holm leaves its p as it is
    assert "family of comparisons of blocks against unstructured, one family per score (1 by FID, 1 by KID;" in text
    assert "Against unstructured: each block-structured configuration" in text
    assert "| RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | Small-Dense | FID | 3 | +0.33 |" in text
    assert "| RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | Dense | FID | 3 | +4.00 |" in text
    with open(sweep / "results.csv", newline="") as file:
        lines = list(csv.DictReader(file))
    assert [line["block_size"] for line in lines] == ["", "", "1", "16"]


def test_a_tiled_configuration_can_be_the_primary_comparison(sweep):
    spec = "rigl-S0.5-p0.1-b16 vs small-dense"
    assert PRIMARY_COMPARISON.match(spec)
    (sweep / SWEEP_FILE).write_text(json.dumps({"config": {"primary_comparison": spec}, "eval": {}}))
    first = build_report(sweep).markdown.split("## All configurations")[0]
    assert "| RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | Small-Dense | FID | 3 | +0.33 |" in first
    assert "| RigL-DM | 0.5 | 0.1 | Small-Dense |" not in first  # the unstructured row is another configuration


def test_learning_curves_pair_blocks_with_unstructured_at_each_step(tmp_path):
    for seed in range(3):
        curve_run(tmp_path, f"dense-seed{seed}", "dense", [60.0, 50.0, 40.0 + seed], seed)
        curve_run(tmp_path, f"rigl-S0.5-p0.1-seed{seed}", "rigl", [70.0, 56.0 + seed, 45.0], seed, sparsity=0.5)
        name = f"rigl-S0.5-p0.1-b16-seed{seed}"
        curve_run(tmp_path, name, "rigl", [71.0 + seed, 56.0, 46.0 + seed], seed, sparsity=0.5)
        for path in (tmp_path / "runs" / name).rglob("*.json"):
            path.write_text(json.dumps({**json.loads(path.read_text()), "block_size": 16}))
    records = read_curve_records(tmp_path)
    assert [(row.method, row.block_size) for row in rows_by_step(records)[1000]] == [
        ("dense", None),
        ("rigl", 1),
        ("rigl", 16),
    ]
    assert {pair.key for pair in equal_cost_pairs(records)} == {("rigl", 0.5, 0.1, 1), ("rigl", 0.5, 0.1, 16)}
    text = build_report(tmp_path).markdown
    section = text.split("## Learning curves")[1].split("### Equal training FLOPs")[0]
    # at step 1000: (71 + s) - 70 = +1, +2, +3; at 2000: 56 - (56 + s) = 0, -1, -2; at 4000: +1, +2, +3
    for step, differences in ((1000, [1, 2, 3]), (2000, [0, -1, -2]), (4000, [1, 2, 3])):
        mean, low, high = interval(differences)
        cells = f"| {step} | RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | unstructured | FID | 3 | {mean:+.2f} "
        assert cells + f"| [{low:+.2f}, {high:+.2f}] |" in section
    assert "family of per-step comparisons of blocks against unstructured, one family per score (3 by FID;" in section
    assert "| 1000 | RigL-DM, 16 x 16 blocks | 0.5 | 0.1 | 72.00 ± 1.00 |" in section


def test_plots_tell_tiled_lines_from_unstructured_ones(sweep, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi: figures.append(figure) or path)
    rows = aggregate(read_runs(sweep))
    plots.fid_vs_step({600: rows, 1200: rows}, tmp_path / "fid_vs_step.png")
    plots.fid_vs_sparsity(rows, tmp_path / "fid_vs_sparsity.png")
    by_step, by_sparsity = (
        {label: line for line, label in zip(*f.axes[0].get_legend_handles_labels())} for f in figures
    )
    tiled, unstructured = "RigL-DM, S = 0.5, p = 0.1, 16 x 16 blocks", "RigL-DM, S = 0.5, p = 0.1"
    assert tiled in by_step and unstructured in by_step
    assert by_step[tiled].lines[0].get_linestyle() != by_step[unstructured].lines[0].get_linestyle()
    assert {"RigL-DM, p = 0.1", "RigL-DM, p = 0.1, 16 x 16 blocks"} <= set(by_sparsity)


@pytest.mark.parametrize("kept", ["images", "curves"])
def test_the_kept_reports_without_blocks_read_as_before(tmp_path, kept):
    source = Path("docs/data") / kept
    shutil.copytree(source, tmp_path / kept)
    build_report(tmp_path / kept)
    for name in ("results.md", "results.csv"):
        assert (tmp_path / kept / name).read_bytes() == (source / name).read_bytes(), name


@pytest.mark.slow  # two tiny trainings and their scores: about 15 s
def test_a_sweep_trains_each_block_size_and_its_report_pairs_them(tmp_path, capsys, monkeypatch):
    from fid_stub import use_pooled_pixels
    from test_sweep import tiny

    use_pooled_pixels(monkeypatch)
    out = tmp_path / "sweep"
    odd = "sparse.exclude=[gru.weight_ih_l0,gru.weight_ih_l0_reverse,final_proj.weight]"  # 13 and 3 wide: b = 2 refused
    args = ["sweep", CONFIG, *tiny(tmp_path / "cache"), odd, "--out", str(out), "--methods", "rigl", "--sparsities"]
    args += ["0.5", "--prune-rates", "0.1", "--block-sizes", "1", "2", "--seeds", "1", "--num", "4"]
    assert main([*args, "--sample-steps", "2", "--no-progress"]) == 0, capsys.readouterr().err
    for name, block in (("rigl-S0.5-p0.1-seed0", 1), ("rigl-S0.5-p0.1-b2-seed0", 2)):
        assert json.loads((out / "runs" / name / "eval.json").read_text())["block_size"] == block
    assert "block_size" not in json.loads((out / SWEEP_FILE).read_text())["config"]["sparse"]
    text = (out / "results.md").read_text()
    assert (
        "| RigL-DM | 0.5 | 0.1 | 2 x 2 |" in text
        and "| RigL-DM, 2 x 2 blocks | 0.5 | 0.1 | unstructured | FID | 1 |" in text
    )
