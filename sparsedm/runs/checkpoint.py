"""Checkpoints: a plain dict (model, optimiser, EMA, engine, RNG, step), written atomically.

A checkpoint is written to a temporary file in the same folder and renamed into place, so a process killed
mid-write leaves the previous checkpoint intact. Only the newest `keep` are kept, besides the milestones
(`keep_steps`), which are kept for good so that they can be scored later (`sparsedm evaluate RUN --at-step N`).

Checkpoints are read with `weights_only=True`: tensors and plain values only, so a checkpoint from someone
else cannot run code when it is loaded (a pickle naming any other function is refused with one line).
"""

import os
import pickle
import re
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np
import torch

from sparsedm.errors import UserError
from sparsedm.runs.files import check_fields, writing
from sparsedm.sparse.compress import expand_tensors, shrink_tensors

PATTERN = re.compile(r"^step_(\d{8})\.pt$")
# Checkpoints written before the task state held tensors carry numpy arrays (ChiroDiff's length table):
# rebuilding an array of plain numbers runs no code, so these few numpy names are allowed as well.
NUMPY_ARRAYS = [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.int64))]
# What every checkpoint the trainer writes holds, and what the commands read from it.
FIELDS = {"step": int, "model": dict, "optimizer": dict, "ema": dict, "engine": dict, "task": dict}
FIX = "delete it to fall back to an earlier one, or point at a file under RUN/checkpoints/ written by `sparsedm train`"


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def list_checkpoints(folder: Path) -> List[Path]:
    """Checkpoints in `folder`, oldest first (temporary files of an interrupted write are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name))


def checkpoint_step(path: Path) -> int:
    return int(PATTERN.match(path.name).group(1))


def save_checkpoint(
    state: dict, folder: Path, step: int, keep: int, compress: bool = False, keep_steps: Iterable[int] = ()
) -> Path:
    """Write `state` atomically; `compress` stores the zeros of its tensors as bit-packed masks (read back
    bit-identically by `load_checkpoint`), so a sparse run's checkpoints shrink with its sparsity. Of the
    others, the newest `keep` stay; those of `keep_steps` are never removed."""
    final = checkpoint_path(folder, step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with writing():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                torch.save(shrink_tensors(state) if compress else state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    milestones = set(keep_steps)
    rolling = [path for path in list_checkpoints(folder) if checkpoint_step(path) not in milestones]
    for old in rolling[:-keep] if keep > 0 else []:
        old.unlink()
    return final


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """The checkpoint's dict, read without running any code it may carry; UserError if it is not one."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAYS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; {FIX}") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder, not a file; {FIX}") from None
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))  # what the weights-only unpickler refused to import
        if named is None:
            raise UserError(f"checkpoint {path} is corrupt or not a checkpoint (not a torch file); {FIX}") from None
        raise UserError(
            f"checkpoint {path} holds Python objects that are not weights ({named.group(1)}); it was refused "
            "unread, since loading it could run code (weights_only=True): use checkpoints written by "
            "`sparsedm train` from a source you trust"
        ) from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); {FIX}") from None
    check_fields(state, FIELDS, f"checkpoint {path}", f"it is not a sparsedm checkpoint; {FIX}")
    try:
        state = expand_tensors(state, map_location)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"checkpoint {path} holds a damaged compressed tensor ({type(exc).__name__}); {FIX}") from None
    check_fields(state["ema"], {"module": dict}, f"checkpoint {path} ema", FIX)
    return state


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = list_checkpoints(folder)
    return found[-1] if found else None
