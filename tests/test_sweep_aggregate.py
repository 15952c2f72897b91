"""The sweep's table from hand-made results: mean ± std over seeds, the grouping by method, S and p, costs
relative to dense, the files `sparsedm report` writes, and the refusal to mix evaluation protocols."""

import csv
import json
import math

import pytest
from PIL import Image

from sparsedm.cli import main
from sparsedm.experiments.aggregate import aggregate, read_runs
from sparsedm.experiments.grid import SweepGrid

PROTOCOL = {
    "data": "KanjiVG, 2000 items",
    "train_steps": 600,
    "train_batch_size": 64,
    "distribution": "erk",
    "update_interval": 50,
    "n_samples": 200,
    "sampler": "ddim",
    "steps": 50,
    "eta": 0.0,
    "sample_seed": 0,
    "reference_split": "val",
    "reference_key": "chirodiff/kanjivg/val/abc",
    "reference_size": 170,
}
F_DENSE = 1_000_000  # forward FLOPs of the dense network (one sample)


def fake_run(sweep, name, method, fid, sparsity=0.0, prune_rate=0.1, **changes):
    """A finished run folder as the sweep leaves it, with round cost figures."""
    density = 1 - sparsity
    f_sparse = F_DENSE * density
    step = {
        "dense": 3 * F_DENSE,
        "static": 3 * f_sparse,
        "magran": 3 * f_sparse,
        "rigl": (3 * f_sparse * 50 + 2 * f_sparse + F_DENSE) / 51,
    }[method]
    record = {
        **PROTOCOL,
        "fid": fid,
        "method": method,
        "sparsity": sparsity,
        "sparsity_actual": sparsity,
        "prune_rate": prune_rate,
        "params_total": 10_000,
        "params_nonzero": 1_000 + 9_000 * density,
        "flops_forward_dense": F_DENSE,
        "flops_forward_sparse": f_sparse,
        "flops_train_step": step,
        "flops_train_step_dense": 3 * F_DENSE,
        "flops_train_total": step * 64 * 600,
        **changes,
    }
    folder = sweep / "runs" / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({k: record[k] for k in record if k != "fid"}))
    (folder / "eval.json").write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path):
    for seed, fid in enumerate([10.0, 12.0, 14.0]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", fid)
    fake_run(tmp_path, "rigl-S0.5-p0.1-seed0", "rigl", 9.0, sparsity=0.5, exploration_rate=0.6)
    fake_run(tmp_path, "rigl-S0.5-p0.1-seed1", "rigl", 11.0, sparsity=0.5, exploration_rate=0.7)
    fake_run(tmp_path, "rigl-S0.5-p0.5-seed0", "rigl", 20.0, sparsity=0.5, prune_rate=0.5, exploration_rate=0.9)
    fake_run(tmp_path, "static-S0.9-seed0", "static", 30.0, sparsity=0.9, prune_rate=0.1, exploration_rate=0.1)
    fake_run(tmp_path, "static-S0.9-seed1", "static", 33.0, sparsity=0.9, prune_rate=0.1)  # from before the rate
    (tmp_path / "runs" / "magran-S0.5-p0.1-seed0").mkdir()  # interrupted: no eval.json, not in the table
    return tmp_path


def test_mean_and_std_over_seeds_per_method_s_and_p(sweep):
    rows = aggregate(read_runs(sweep))
    assert [(r.method, r.sparsity, r.prune_rate, r.seeds) for r in rows] == [
        ("dense", None, None, 3),
        ("static", 0.9, None, 2),
        ("rigl", 0.5, 0.1, 2),
        ("rigl", 0.5, 0.5, 1),
    ]
    dense, static, rigl, rigl_single = rows
    assert (dense.fid_mean, dense.fid_std) == (12.0, 2.0)  # sample std of 10, 12, 14
    assert (static.fid_mean, static.fid_std) == (31.5, math.sqrt(4.5))
    assert (rigl.fid_mean, rigl.fid_std) == (10.0, math.sqrt(2.0))
    assert (rigl_single.fid_mean, rigl_single.fid_std) == (20.0, None)
    assert (dense.params_rel, dense.flops_forward_rel, dense.flops_train_rel) == (1.0, 1.0, 1.0)
    assert static.params_nonzero == pytest.approx(1_900) and static.params_rel == pytest.approx(0.19)
    assert static.flops_forward == pytest.approx(100_000) and static.flops_forward_rel == pytest.approx(0.1)
    assert static.flops_train_rel == pytest.approx(0.1) and static.flops_train == pytest.approx(3 * 100_000 * 64 * 600)
    # RigL's dense gradient every ΔT = 50 steps: (3 x 0.5 x 50 + 2 x 0.5 + 1) / 51 / 3 of dense
    assert rigl.flops_train_rel == pytest.approx((75 + 1 + 1) / 51 / 3)
    assert (dense.exploration_rate, static.exploration_rate, rigl.exploration_rate) == (None, 0.1, pytest.approx(0.65))


def test_report_writes_the_table_the_csv_and_the_plots(sweep, capsys):
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    names = ["results.csv", "results.md", "fid_vs_sparsity.png", "fid_vs_train_flops.png", "fid_vs_exploration.png"]
    assert all((sweep / name).is_file() for name in names)
    table = (sweep / "results.md").read_text()
    assert table in out + "\n"
    lines = table.splitlines()
    assert lines[0] == "| Method | S | p | FID ↓ | KID ↓ | Seeds | Non-zero params | Forward FLOPs | Training FLOPs |"
    assert lines[2] == "| Dense | – | – | 12.00 ± 2.00 | – | 3 | 10k (100.0%) | 1M (100.0%) | 115G (100.0%) |"
    assert lines[3] == "| Static-DM | 0.9 | – | 31.50 ± 2.12 | – | 2 | 1.9k (19.0%) | 100k (10.0%) | 11.5G (10.0%) |"
    assert lines[5] == "| RigL-DM | 0.5 | 0.5 | 20.00 | – | 1 | 5.5k (55.0%) | 500k (50.0%) | 58G (50.3%) |"
    assert "200 samples (DDIM, 50 steps) against the 170 images of the val split" in table
    assert "Training state" not in table  # no run recorded it
    with open(sweep / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert "train_state_bytes" not in rows[0]
    assert [(r["method"], r["sparsity"], r["prune_rate"], r["fid_std"], r["exploration_rate"]) for r in rows] == [
        ("dense", "", "", "2.0", ""),
        ("static", "0.9", "", str(math.sqrt(4.5)), "0.1"),
        ("rigl", "0.5", "0.1", str(math.sqrt(2.0)), str((0.6 + 0.7) / 2)),
        ("rigl", "0.5", "0.5", "", "0.9"),
    ]
    for name in names[2:]:
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_the_training_state_bytes_get_a_column_when_runs_recorded_them(tmp_path, capsys):
    mib = 2**20
    for seed, held in enumerate([10 * mib, 12 * mib]):
        fake_run(tmp_path, f"dense-seed{seed}", "dense", 12.0, train_state_bytes_total=held)
    for seed in range(2):
        fake_run(tmp_path, f"rigl-S0.9-p0.1-seed{seed}", "rigl", 14.0, sparsity=0.9, train_state_bytes_total=2.75 * mib)
    fake_run(tmp_path, "static-S0.9-seed0", "static", 30.0, sparsity=0.9, train_state_bytes_total=3 * mib)
    fake_run(tmp_path, "static-S0.9-seed1", "static", 30.0, sparsity=0.9)  # trained before it was recorded
    assert main(["report", str(tmp_path)]) == 0
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0].endswith("| Training FLOPs | Training state |") and lines[1].count("---") == 10
    assert lines[2].endswith("| 11.0 MiB (100.0%) |")  # the mean over seeds, and Dense's share of its own
    assert lines[3].startswith("| Static-DM") and lines[3].endswith("| – |")  # one of its seeds has none
    assert lines[4].startswith("| RigL-DM") and lines[4].endswith("| 2.8 MiB (25.0%) |")
    assert any(line.startswith("Training state: the bytes one process holds") for line in lines)
    with open(tmp_path / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["train_state_bytes"], r["train_state_rel"]) for r in rows] == [
        (str(11.0 * mib), "1.0"),
        ("", ""),
        (str(2.75 * mib), "0.25"),
    ]


def test_runs_of_another_protocol_are_not_mixed(sweep, capsys):
    fake_run(sweep, "rigl-S0.5-p0.1-seed2", "rigl", 10.0, sparsity=0.5, n_samples=100)
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "differ in n_samples (200 vs 100)" in err and "rigl-S0.5-p0.1-seed2" in err


def test_report_of_an_empty_sweep_says_what_to_do(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no evaluated run" in capsys.readouterr().err


def test_the_default_grid_runs_dense_once_per_seed_and_static_without_p():
    runs = SweepGrid().runs()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 3 * (1 + 5 + 2 * 5 * 3)
    assert names[:3] == ["dense-seed0", "static-S0.1-seed0", "static-S0.25-seed0"]
    assert "rigl-S0.75-p0.05-seed2" in names and "magran-S0.9-p0.5-seed1" in names
    assert not any(n.startswith("static") and "-p" in n for n in names)
    magran = next(r for r in runs if r.name == "magran-S0.9-p0.5-seed1")
    assert magran.overrides() == [
        "sparse.method=magran",
        "seed=1",
        "sparse.seed=1",
        "sparse.sparsity=0.9",
        "sparse.prune_rate=0.5",
    ]
