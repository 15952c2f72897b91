"""Sweeps as job arrays: `--shard K/N` slices of the grid, filled into one folder one after the other or by
processes side by side, give every run once and the report a single process gives; lock files keep two
processes off one run, and a dead process's lock is taken over."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fid_stub import use_pooled_pixels
from test_sweep import sweep_args

from sparsedm.cli import main
from sparsedm.errors import UserError
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.shards import claim, in_slice, lock_path, parse_shard

SCRIPT = Path(__file__).with_name("shard_script.py")
RUNS = ["dense-seed0", "static-S0.5-seed0", "rigl-S0.5-p0.1-seed0", "rigl-S0.5-p0.5-seed0"]
REPORT = ["results.csv", "results.md"]


@pytest.fixture(autouse=True)
def _stub(monkeypatch):
    use_pooled_pixels(monkeypatch)


def counts(printed):
    """(runs, trained) from the sweep's summary line."""
    runs, trained = re.search(r"(\d+) runs: (\d+) trained", printed).groups()
    return int(runs), int(trained)


def fingerprints(out):
    return {name: json.loads((out / "runs" / name / "summary.json").read_text())["weights_sha256"] for name in RUNS}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The whole grid in one process: what the shards must add up to."""
    out = tmp_path_factory.mktemp("single") / "sweep"
    # one thread (conftest), as in every other process here: equal weights need equal reduction orders
    with pytest.MonkeyPatch.context() as patch:
        use_pooled_pixels(patch)
        assert main(sweep_args(out, out.parent / "cache")) == 0
    return out


def test_slices_cover_the_grid_once_evenly_and_the_shard_option_is_checked():
    runs = SweepGrid().runs()  # the paper's 108 runs
    slices = [in_slice(runs, (k, 5)) for k in range(5)]
    assert sorted(name for part in slices for name in (r.name for r in part)) == sorted(r.name for r in runs)
    assert {len(part) for part in slices} <= {len(runs) // 5, len(runs) // 5 + 1}
    assert in_slice(runs, (2, 5)) == slices[2]  # a function of the grid alone
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="give K/N with 0 <= K < N"):
            parse_shard(bad)


@pytest.mark.slow
def test_shards_one_after_the_other_fill_one_folder_like_a_single_sweep(tmp_path, capsys, single):
    out = tmp_path / "sweep"
    assert main(sweep_args(out, single.parent / "cache", "--shard", "1/2", "--list")) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listed] == [
        ["0/2", "dense-seed0", "to"],
        ["1/2", "static-S0.5-seed0", "to"],
        ["0/2", "rigl-S0.5-p0.1-seed0", "to"],
        ["1/2", "rigl-S0.5-p0.5-seed0", "to"],
    ]
    assert not out.exists()  # listing writes nothing
    assert main(sweep_args(out, single.parent / "cache", "--shard", "0/2")) == 0
    assert counts(capsys.readouterr().out) == (2, 2)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["dense-seed0", "rigl-S0.5-p0.1-seed0"]
    assert main(sweep_args(out, single.parent / "cache", "--shard", "1/2")) == 0
    assert counts(capsys.readouterr().out) == (2, 2)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(RUNS)  # no lock left behind
    assert fingerprints(out) == fingerprints(single)
    for name in REPORT:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert main(sweep_args(out, single.parent / "cache", "--list")) == 0
    assert all(line.endswith("done") for line in capsys.readouterr().out.splitlines())


def run_side_by_side(out, cache, *shards):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    jobs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), *sweep_args(out, cache, *shard)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in shards
    ]
    results = [job.communicate(timeout=600) for job in jobs]
    for job, (stdout, stderr) in zip(jobs, results):
        assert job.returncode == 0, stderr[-2000:]
    return [stdout for stdout, _ in results]


@pytest.mark.slow  # four sweeps in fresh processes
def test_processes_side_by_side_share_the_folder_without_clashing(tmp_path, capsys, single):
    cache = single.parent / "cache"
    sliced = tmp_path / "sliced"
    printed = run_side_by_side(sliced, cache, ["--shard", "0/2"], ["--shard", "1/2"])
    assert [counts(p) for p in printed] == [(2, 2), (2, 2)]
    overlapping = tmp_path / "overlapping"  # both take the whole grid: the locks share it out
    printed = run_side_by_side(overlapping, cache, [], [])
    assert sum(counts(p)[1] for p in printed) == len(RUNS), printed
    for out in (sliced, overlapping):
        assert main(["report", str(out)]) == 0
        assert fingerprints(out) == fingerprints(single)
        for name in REPORT:
            assert (out / name).read_bytes() == (single / name).read_bytes(), name
        assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(RUNS)


def test_a_held_lock_is_respected_and_a_dead_process_lock_taken_over(tmp_path):
    with claim(tmp_path, "a") as first:
        with claim(tmp_path, "a") as second:
            assert first and not second
        assert lock_path(tmp_path, "a").exists()
    assert not lock_path(tmp_path, "a").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = lock_path(tmp_path, "b")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}))
    with claim(tmp_path, "b") as taken:
        assert taken and json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0}))  # a fresh lock of another host
    with claim(tmp_path, "b") as taken:
        assert not taken
    os.utime(path, (0, 0))  # not refreshed for decades: its job is gone
    with claim(tmp_path, "b") as taken:
        assert taken
