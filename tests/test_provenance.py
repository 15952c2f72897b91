"""Provenance: the commit, versions and machine recorded with every result, and the report's line about them."""

import subprocess

import torch

from sparsedm.runs import provenance as prov


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=prov.PACKAGE_DIR).stdout


def test_the_record_names_this_checkout_and_machine():
    prov.git_state.cache_clear()  # read once per process; a commit made since then is not this process's code
    record = prov.provenance(torch.device("cpu"))
    assert record["git_commit"] == git("rev-parse", "HEAD").strip()
    assert record["git_dirty"] == bool(git("status", "--porcelain", "--untracked-files=no").strip())
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"
    assert record["threads"] == torch.get_num_threads() and record["cpu"]


def test_a_package_outside_a_checkout_records_no_commit(tmp_path, monkeypatch):
    prov.git_state.cache_clear()
    monkeypatch.setattr(prov, "PACKAGE_DIR", tmp_path / "sparsedm")
    (tmp_path / "sparsedm").mkdir()
    try:
        assert prov.git_state() == (None, None)
    finally:
        prov.git_state.cache_clear()
    # nor does one installed into a virtual environment inside some other checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    venv_package = tmp_path / ".venv" / "lib" / "sparsedm"
    venv_package.mkdir(parents=True)
    monkeypatch.setattr(prov, "PACKAGE_DIR", venv_package)
    try:
        assert prov.git_state() == (None, None)
    finally:
        prov.git_state.cache_clear()


def record(commit, dirty=False):
    return {"provenance": {"git_commit": commit, "git_dirty": dirty, "sparsedm": "0.1.0"}}


def test_one_clean_commit_gives_no_warning():
    line, warning = prov.describe_commits([record("a" * 40), record("a" * 40)])
    assert line == "aaaaaaaaaa (2 runs)" and warning is None


def test_mixed_commits_changed_trees_and_unrecorded_runs_are_named():
    records = [record("a" * 40), record("b" * 40, dirty=True), {}, {"provenance": {"sparsedm": "0.1.0"}}]
    line, warning = prov.describe_commits(records)
    assert line == "aaaaaaaaaa (1 run), bbbbbbbbbb (1 run), installed package 0.1.0 (1 run), unrecorded (1 run)"
    assert warning == f"the runs came from 4 different commits and 1 from a tree with uncommitted changes: {line}"
