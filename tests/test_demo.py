"""`sparsedm demo`, shortened (a few steps, a few samples, a small slice of KanjiVG): the four methods are
trained and evaluated, the report folder is complete, and running it again redoes nothing.
FID uses pooled pixels (fid_stub) instead of Inception."""

import pytest
from fid_stub import use_pooled_pixels
from PIL import Image

from sparsedm.cli import main

RUNS = ["dense-seed0", "magran-S0.5-p0.1-seed0", "rigl-S0.5-p0.1-seed0", "static-S0.5-seed0"]


@pytest.fixture(autouse=True)
def _stub(monkeypatch):
    use_pooled_pixels(monkeypatch)


@pytest.mark.slow
def test_short_demo_writes_its_report_and_skips_finished_runs(tmp_path, capsys, tiny_run):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--steps",
        "4",
        "--num",
        "6",
        "--workers",
        "1",
        "--no-progress",
        *tiny_run,
        "train.val_batches=1",
        "sample.steps=2",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 runs: 4 trained, 0 evaluated, 0 finished before" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == RUNS
    pictures = [f"samples_{name}.png" for name in RUNS] + [
        "samples_S0.5.png",
        "fid_vs_sparsity.png",
        "fid_vs_train_flops.png",
    ]
    for name in ["results.md", "results.csv", *pictures]:
        assert (out / name).is_file(), name
    table = (out / "results.md").read_text()
    assert table in printed + "\n"
    first_table = table.split("\n\n")[0]  # the paired comparison with Dense follows it
    rows = [line for line in first_table.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [row.split(" | ")[0] for row in rows] == ["| Dense", "| Static-DM", "| RigL-DM", "| MagRan-DM"]
    assert "6 samples (DDIM, 2 steps)" in table
    with Image.open(out / "samples_S0.5.png") as picture:
        assert picture.size[1] > 4 * 40  # a row per method

    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("eval.json")}
    assert main(args) == 0
    assert "4 runs: 0 trained, 0 evaluated, 4 finished before" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("eval.json")} == before
