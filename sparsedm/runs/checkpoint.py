"""Checkpoints: a plain dict (model, optimiser, EMA, engine, RNG, step), written atomically.

A checkpoint is written to a temporary file in the same folder and renamed into place, so a process killed
mid-write leaves the previous checkpoint intact. Only the newest `keep` are kept.
"""

import os
import re
from pathlib import Path
from typing import List, Optional

import torch

from sparsedm.errors import UserError

PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def list_checkpoints(folder: Path) -> List[Path]:
    """Checkpoints in `folder`, oldest first (temporary files of an interrupted write are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name))


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink()
    return final


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist")
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); delete it to fall back to an earlier one"
        )
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{path} is not a sparsedm checkpoint (no model/step); point at a file under RUN/checkpoints/")
    return state


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = list_checkpoints(folder)
    return found[-1] if found else None
