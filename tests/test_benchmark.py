"""The engine benchmark runs end to end (a smoke test: its timings depend on the machine and are not checked)."""

import json
import os
import re
import subprocess
import sys

import pytest

MODELS = ("cpu-ldm", "ldm4-small", "chirodiff", "cpu-dit", "dit-s2")  # the benchmarks' workloads, in order


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.slow
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


@pytest.mark.slow
def test_sparse_inference_benchmark_prints_every_model_and_sparsity():
    args = [sys.executable, "benchmarks/sparse_inference.py", "--tiny", "--sparsities", "0.5", "0.9"]
    args += ["--distributions", "uniform", "--steps", "1", "--rounds", "1", "--batch", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(
        r"^(cpu-ldm|ldm4-small|chirodiff|cpu-dit|dit-s2)\s+uniform\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\S+)\s+([\d.]+)\s+(.+)$",
        result.stdout,
        re.M,
    )
    assert [(r[0], r[1]) for r in rows] == [(model, s) for model in MODELS for s in ("0.50", "0.90")]
    assert all(float(r[5]) < 1e-4 for r in rows)  # the sparse model computes what the masked one does
    compressed = {(r[0], r[1]): float(r[6]) for r in rows}
    assert all(compressed[(m, "0.90")] < compressed[(m, "0.50")] for m in MODELS)
    assert all(re.search(r"(Conv2d 3x3|Linear) \d+/\d+", r[7]) for r in rows)  # the per-kind layer counts
    assert re.search(r"GRU layer 8 units, 12 steps, S = 0.9: CSR step loop / dense fused GRU [\d.]+", result.stdout)
    # the DiTs' rows also time Small-Dense of their S: narrower than the tiny DiTs' 16, not wider at 0.9 (their dense
    # timestep embedders hold most weights, so both S give 12 here)
    small = {(r[0], r[1]): re.search(r"small-dense hidden (\d+): ([\d.]+)$", r[7]) for r in rows}
    assert [key for key, found in small.items() if found] == [
        (m, s) for m in ("cpu-dit", "dit-s2") for s in ("0.50", "0.90")
    ]
    widths = {key: int(found.group(1)) for key, found in small.items() if found}
    assert all(widths[m, "0.90"] <= widths[m, "0.50"] < 16 for m in ("cpu-dit", "dit-s2"))
    assert all(float(found.group(2)) > 0 for found in small.values() if found)


def gpu_check_on_the_cpu(tmp_path, task: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.py on one task with the GPU hidden, two steps a check; it must succeed."""
    args = [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--tasks", task]
    args += ["--steps", "2", "--block", "1", "--resume-steps", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_gpu_check_without_a_gpu_says_so_and_checks_the_rest(tmp_path):
    """The CPU path of benchmarks/gpu_check.py, on ChiroDiff (the LDM half runs the same checks)."""
    result = gpu_check_on_the_cpu(tmp_path, "chirodiff")
    assert result.stdout.startswith("no GPU: checking on the CPU")
    ratios = re.findall(r"^chirodiff (\w+): time per step RigL S = 0.5 / dense = ([\d.]+)$", result.stdout, re.M)
    assert [p for p, _ in ratios] == ["fp32", "bf16"] and all(float(r) > 0 for _, r in ratios)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu"
    checks = [k for k in report if k.startswith("chirodiff: ")]
    assert len(checks) == 4 and all(report[k] is True for k in checks)
    assert (tmp_path / "chirodiff" / "full" / "samples" / "samples.npz").is_file()
    assert result.stdout.rstrip().endswith("all checks passed")


@pytest.mark.slow
def test_sparse_training_benchmark_prints_every_layer_and_the_models_gradients_agree():
    args = [sys.executable, "benchmarks/sparse_training.py", "--tiny", "--sparsities", "0.5", "0.95"]
    args += ["--repeats", "1", "--rounds", "1", "--batch", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(
        r"^(Linear|Conv2d \S+) .+\]\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)\s+(module|\w+:\S+)"
        r"\s+fwd [\d.]+\(\w+\) dx [\d.]+\(\w+\) dw [\d.]+\(\w+\)$",
        result.stdout,
        re.M,
    )
    assert {r[2] for r in rows} == {"0.50", "0.95"} and any(r[0] == "Linear" for r in rows)
    assert all(float(r[7]) == 1.0 for r in rows if r[8] == "module")  # a layer kept costs what the masked one does
    summaries = re.findall(
        r"^(cpu-ldm|ldm4-small|chirodiff|cpu-dit|dit-s2) S = ([\d.]+): masked layers, measured plans / dense ([\d.]+); whole model "
        r"fwd\+bwd, measured / masked ([\d.]+) \((\d+)/(\d+) layers sparse, gradient difference (\S+) of the largest\)$",
        result.stdout,
        re.M,
    )
    assert [(s[0], s[1]) for s in summaries] == [(model, s) for model in MODELS for s in ("0.5", "0.95")]
    assert all(float(s[6]) < 1e-4 for s in summaries)  # sparse layers compute the masked model's gradients


@pytest.mark.slow
def test_training_cycle_benchmark_prints_time_and_memory_ratios_per_model():
    args = [sys.executable, "benchmarks/sparse_training.py", "--tiny", "--cycle", "--sparsities", "0.9"]
    args += ["--cycles", "1", "--interval", "3", "--distributions", "uniform", "--batch", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(
        r"^(cpu-ldm|ldm4-small|chirodiff|cpu-dit|dit-s2)\s+0\.90 uniform\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
        r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+/\d+/\d+)",
        result.stdout,
        re.M,
    )
    assert [r[0] for r in rows] == list(MODELS)
    for model, *ratios, layers in rows:
        cycle, update, other, long, seconds, pgo, ema, engine, mib = map(float, ratios)
        assert cycle > 0 and update > 0 and other > 0 and seconds > 0
        assert min(update, other) <= long <= max(update, other)  # a mix of the two, weighted to the other steps
        assert engine == 1.0  # the masks and exploration record are the same in both modes
        sparse, dense, masked = map(int, layers.split("/"))
        assert sparse + dense + masked == {"chirodiff": 2}.get(model, sparse + dense + masked) > 0
        if model in ("cpu-ldm", "ldm4-small") and masked == 0:  # every weight compact: ~0.1 of the values, plus indices
            assert pgo < 0.45 and ema < 0.2, (model, pgo, ema)
        assert pgo <= 1.0
        if model == "chirodiff":  # the GRU, most of the model, stays masked
            assert 0.5 < pgo <= 1.0
    # the DiTs' Small-Dense: a narrower dense DiT holds less than the masked full-width one, and is timed too
    small = re.findall(
        r"^(cpu-dit|dit-s2) .+  small-dense hidden (\d+): cycle ([\d.]+), p\+g\+opt ([\d.]+)$", result.stdout, re.M
    )
    assert [s[0] for s in small] == ["cpu-dit", "dit-s2"]
    assert all(int(width) < 16 and float(cycle) > 0 and 0 < float(pgo) < 1 for _, width, cycle, pgo in small)


@pytest.mark.slow
def test_gpu_check_times_the_dit_compact_against_masked_and_checks_it_on_the_cpu(tmp_path):
    result = gpu_check_on_the_cpu(tmp_path, "dit")
    ratio = re.search(
        r"^dit: time per step RigL S = 0.9, sparse.kernels=measure / masked = ([\d.]+)$", result.stdout, re.M
    )
    assert ratio and float(ratio.group(1)) > 0
    blocks = re.search(
        r"^dit: time per step RigL S = 0.9, 8 x 8 blocks, measure / masked = ([\d.]+)$", result.stdout, re.M
    )
    assert blocks and float(blocks.group(1)) > 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert f"{report['dit compact blocks step ratio']:.3f}" == blocks.group(1)
    checks = [k for k in report if k.startswith("dit: ")]
    assert len(checks) == 4 and all(report[k] is True for k in checks)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sparse_training.py", "sparse_inference.py"])
def test_block_sizes_give_the_dits_a_row_per_block_size(script):
    """`--block-sizes 1 4`: each DiT's unstructured row as before, then its row with masks of 4 x 4 tiles."""
    args = [sys.executable, f"benchmarks/{script}", "--tiny", "--models", "chirodiff", "cpu-dit", "dit-s2"]
    args += ["--block-sizes", "1", "4", "--sparsities", "0.9", "--distributions", "uniform", "--batch", "2"]
    args += ["--cycle", "--cycles", "1", "--interval", "3"] if script == "sparse_training.py" else ["--steps", "1"]
    args += [] if script == "sparse_training.py" else ["--rounds", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = re.findall(r"^(chirodiff|cpu-dit|dit-s2)(/b4)?\s+\S+\s+\S+\s+[\d.]+", result.stdout, re.M)
    assert ["".join(label) for label in labels] == ["chirodiff", "cpu-dit", "cpu-dit/b4", "dit-s2", "dit-s2/b4"]
