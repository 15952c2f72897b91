"""MEST-DM, a record added without editing the sweep, through `sparsedm sweep` in masked and in compact storage:
the same masks either way. FID uses pooled pixels (fid_stub) instead of Inception."""

import json

import pytest
from fid_stub import use_pooled_pixels
from test_sweep import tiny

from sparsedm.cli import main

pytestmark = pytest.mark.slow


def test_mest_sweeps_in_both_storages(tmp_path, monkeypatch, capsys):
    use_pooled_pixels(monkeypatch)
    grid = ["--methods", "static", "mest", "--sparsities", "0.75", "--prune-rates", "0.5"]
    evaluation = ["--seeds", "1", "--num", "4", "--sample-steps", "2", "--no-progress"]
    summaries = {}
    for kernels in ("masked", "compact"):
        out = tmp_path / kernels
        overrides = [*tiny(tmp_path / "cache"), f"sparse.kernels={kernels}"]
        args = ["sweep", "configs/chirodiff_kanjivg_cpu.yaml", *overrides, "--out", str(out), *grid, *evaluation]
        assert main(args) == 0, capsys.readouterr().err
        assert "| MEST-DM | 0.75 | 0.5 | Static-DM, S = 0.75 |" in (out / "results.md").read_text()
        summaries[kernels] = json.loads((out / "runs" / "mest-S0.75-p0.5-seed0" / "summary.json").read_text())
    assert summaries["masked"]["masks_sha256"] == summaries["compact"]["masks_sha256"]
    assert summaries["compact"]["sparsity_actual"] == pytest.approx(0.75, abs=0.01)
