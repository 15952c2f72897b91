"""The engine benchmark runs end to end (a smoke test: its timings depend on the machine and are not checked)."""

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("fused", [True, False])
def test_engine_overhead_benchmark_prints_every_method(fused):
    args = [
        sys.executable,
        "benchmarks/engine_overhead.py",
        "--cycles",
        "1",
        "--interval",
        "2",
        "--batch",
        "1",
        "--block",
        "1",
    ]
    result = subprocess.run(
        args + ([] if fused else ["--no-fused"]),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("AdamW fused" if fused else "AdamW per-tensor") in result.stdout
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(
            r"^\s*(dense|static|magran|rigl)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)$", result.stdout, re.M
        )
    }
    assert set(rows) == {"dense", "static", "magran", "rigl"}
    assert rows["dense"][1] == "1.000" and rows["dense"][2] == "-" and rows["static"][2] == "-"
    assert float(rows["magran"][2]) > 0 and float(rows["rigl"][2]) > 0  # a timed update that replaced weights
    assert all(float(r[3]) > 1.0 for m, r in rows.items() if m != "dense")  # masks cost memory
