"""Which code and machine produced a result: recorded in every summary.json and evaluation file.

    {"sparsedm": "0.1.0", "git_commit": "d4a6ccb...", "git_dirty": false, "torch": "2.13.0",
     "python": "3.11.7", "device": "cpu", "cpu": "Intel(R) Xeon(R) ...", "threads": 1}

`git_commit` and `git_dirty` come from the checkout the package is imported from (an editable install or a
clone on PYTHONPATH); both are None for a package installed from a wheel. `git_dirty` counts changes to
tracked files only: run folders and caches inside a checkout are not code. A long study should run from a
clean clone at a fixed commit (docs/evaluation.md), so that every run of it names the same commit.
"""

import functools
import platform
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import torch

import sparsedm

PACKAGE_DIR = Path(sparsedm.__file__).resolve().parent


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@functools.lru_cache(maxsize=1)
def git_state() -> Tuple[Optional[str], Optional[bool]]:
    """(commit, uncommitted changes to tracked files) of the checkout holding this package, or (None, None)."""
    top = _git("rev-parse", "--show-toplevel")
    # a package installed into a virtual environment that sits inside some other checkout is not that checkout's
    if not top or Path(top).resolve() / "sparsedm" != PACKAGE_DIR:
        return None, None
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return None, None
    return commit, bool(status)


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def provenance(device: torch.device) -> dict:
    """The code, library versions and machine of this process, for a result computed on `device`."""
    commit, dirty = git_state()
    return {
        "sparsedm": sparsedm.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
    }


def describe_commits(records: list, field: str = "provenance") -> Tuple[str, Optional[str]]:
    """(a line listing the commits `records` came from with their counts, a warning line or None when they
    differ or some came from a changed tree). Records without provenance count as "unrecorded"."""
    counts = {}
    dirty = 0
    for record in records:
        found = record.get(field) or {}
        commit = found.get("git_commit")
        name = commit[:10] if commit else ("installed package " + found["sparsedm"] if found else "unrecorded")
        counts[name] = counts.get(name, 0) + 1
        dirty += bool(found.get("git_dirty"))
    line = ", ".join(f"{name} ({n} run{'s' if n != 1 else ''})" for name, n in sorted(counts.items()))
    problems = []
    if len(counts) > 1:
        problems.append(f"{len(counts)} different commits")
    if dirty:
        problems.append(f"{dirty} from a tree with uncommitted changes")
    warning = f"the runs came from {' and '.join(problems)}: {line}" if problems else None
    return line, warning
