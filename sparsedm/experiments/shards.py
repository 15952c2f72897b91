"""Sweeps on a cluster: slices of the grid for the jobs of an array, and a lock per run so they never clash.

    sparsedm sweep CONFIG --out /shared/sweep --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT

Slice K of N (K = 0 .. N-1) holds the grid's runs i with i mod N = K, i their place in the grid's fixed order
(`SweepGrid.runs`): the assignment depends only on the grid, never on which runs have finished, and the
slices differ in size by at most one run.

Whoever trains or evaluates a run holds SWEEP/runs/NAME.lock, created with O_CREAT | O_EXCL (atomic on local
disks and on NFS v3+), so two jobs given overlapping slices, or a plain sweep started beside them, skip a run
another job holds. A holder refreshes the lock's time every HEARTBEAT_S seconds. A lock is stale, and taken
over, when its process is gone (same host) or its time is older than STALE_S (a job on another host that was
killed); taking over is itself guarded by an O_EXCL file, so two jobs cannot both take one run.
"""

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import RUNS

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0  # seconds between refreshes of a held lock's time
STALE_S = 600.0  # a lock not refreshed for this long belongs to a dead job


def parse_shard(text: str) -> Tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise UserError(
            f"--shard {text}: give K/N with 0 <= K < N, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"
        )
    return k, n


def slice_of(index: int, shards: int) -> int:
    """The slice of the run at `index` in the grid's order."""
    return index % shards


def in_slice(items: List, shard: Optional[Tuple[int, int]]) -> List:
    """The items of slice K of N (all of them without a shard)."""
    if shard is None:
        return list(items)
    k, n = shard
    return [item for i, item in enumerate(items) if slice_of(i, n) == k]


def lock_path(sweep_dir: Path, name: str) -> Path:
    return Path(sweep_dir) / RUNS / f"{name}.lock"


def _create_exclusively(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return True


def holder(path: Path) -> Optional[dict]:
    """Who holds the lock at `path` ({host, pid, since}); None when nobody does."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # being written this instant, or a torn file: judged by its age alone
        return {}


def is_stale(path: Path, owner: dict) -> bool:
    """Whether the lock at `path`, held by `owner`, belongs to a dead job (its process gone, or not refreshed)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return age > STALE_S


def _take_over(path: Path, owner: dict) -> None:
    """Remove a stale lock, unless another job is already doing so or it changed hands meanwhile."""
    guard = path.with_name(path.name + ".takeover")
    if not _create_exclusively(guard, str(os.getpid())):
        try:
            if time.time() - guard.stat().st_mtime > STALE_S:
                guard.unlink()
        except FileNotFoundError:
            pass
        return
    try:
        if holder(path) == owner:
            log.warning("taking over the stale lock %s of %s", path, owner or "an unreadable holder")
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except FileNotFoundError:
            return


@contextmanager
def claim(sweep_dir: Path, name: str) -> Iterator[bool]:
    """Hold the run's lock for the block (yields True), or yield False when another live job holds it."""
    path = lock_path(sweep_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    claimed = _create_exclusively(path, record)
    if not claimed:
        owner = holder(path)
        if owner is not None and is_stale(path, owner):
            _take_over(path, owner)
        claimed = _create_exclusively(path, record)
    if not claimed:
        yield False
        return
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
    beat.start()
    try:
        yield True
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)
