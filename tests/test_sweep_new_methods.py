"""SNFS and GraNet through `sparsedm sweep` and its report, next to Static-DM: they train, are evaluated, get
their rows in the table, the paired tables and the plots, and their training FLOPs follow their own rules.
FID uses pooled pixels (fid_stub) instead of Inception."""

import json

import pytest
from fid_stub import use_pooled_pixels
from test_sweep import tiny

from sparsedm.cli import main
from sparsedm.sparse import train_flops_per_step

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _stub(monkeypatch):
    use_pooled_pixels(monkeypatch)


def test_snfs_and_granet_sweep_and_report(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--methods", "static", "snfs", "granet", "--sparsities", "0.75", "--prune-rates", "0.5"]
    evaluation = ["--seeds", "1", "--num", "4", "--sample-steps", "2", "--no-progress"]
    args = ["sweep", "configs/chirodiff_kanjivg_cpu.yaml", *tiny(tmp_path / "cache"), "--out", str(out)]
    assert main([*args, *grid, *evaluation]) == 0, capsys.readouterr().err
    table = (out / "results.md").read_text()
    assert "| SNFS-DM | 0.75 | 0.5 |" in table and "| GraNet-DM | 0.75 | 0.5 |" in table
    for name in ("SNFS-DM", "GraNet-DM"):  # paired with Static-DM at the same S
        assert f"| {name} | 0.75 | 0.5 | Static-DM, S = 0.75 |" in table

    granet = json.loads((out / "runs" / "granet-S0.75-p0.5-seed0" / "summary.json").read_text())
    updates = [
        json.loads(line)
        for line in (out / "runs" / "granet-S0.75-p0.5-seed0" / "metrics.jsonl").read_text().splitlines()
        if '"mask_update"' in line
    ]
    # 6 steps, ΔT = 2, t_end = 4: S rises from S_0 = 0.5 at step 2 and reaches 0.75 at step 4
    assert [u["step"] for u in updates] == [2, 4] and updates[-1]["target_sparsity"] == 0.75
    assert 0.5 < updates[0]["target_sparsity"] < 0.75
    assert granet["sparsity_actual"] == pytest.approx(0.75, abs=0.01)
    # its training FLOPs average f_S over the steps: more than the final masks' f_S would give
    final_rule = train_flops_per_step(
        "granet", granet["flops_forward_sparse"], granet["flops_forward_dense"], granet["update_interval"]
    )
    assert granet["flops_train_step"] > final_rule

    snfs = json.loads((out / "runs" / "snfs-S0.75-p0.5-seed0" / "summary.json").read_text())
    evaluated = json.loads((out / "runs" / "snfs-S0.75-p0.5-seed0" / "eval.json").read_text())
    assert snfs["sparsity_actual"] == pytest.approx(0.75, abs=0.01)
    assert snfs["flops_train_step"] >= 2 * snfs["flops_forward_sparse"] + snfs["flops_forward_dense"] - 1e-6
    assert evaluated["flops_train_total"] == snfs["flops_train_step"] * 16 * 6
