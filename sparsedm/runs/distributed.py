"""torch.distributed set-up from the environment torchrun provides (RANK, WORLD_SIZE, LOCAL_RANK)."""

import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparsedm.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info.enabled:
        name = f"cuda:{info.local_rank}"
    return torch.device(name)


def init_distributed(backend: str, device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if backend == "auto":
            uses_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
            backend = "nccl" if uses_cuda else "gloo"
        # torch._dynamo imported after the group exists (building an optimizer does it) keeps the group alive
        # past destroy_process_group (torch 2.13): its gloo threads then live on into interpreter shutdown and
        # now and then abort the process after a finished run (SIGABRT in 5 of 160 minimal two-rank gloo runs
        # here; 0 of 80 with this import). Imported first, the group goes when `leave_distributed` destroys it.
        importlib.import_module("torch._dynamo")

        dist.init_process_group(backend)
    return info


def leave_distributed() -> None:
    """Destroy the process group, if one was joined, while the interpreter is whole (torch's shutdown advice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo, device: torch.device) -> None:
    if info.enabled:
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


@contextmanager
def main_process_first(info: DistInfo, device: torch.device):
    """Run the block on rank 0 first, then on the other ranks: rank 0 fills the caches (preprocessed strokes,
    encoded latents) and the others read them, instead of every rank doing the work. If rank 0 fails inside
    the block, torchrun stops the waiting ranks."""
    if info.enabled and not info.is_main:
        barrier(info, device)
    yield
    if info.enabled and info.is_main:
        barrier(info, device)


def check_masks_agree(fingerprint: str, step: int, device: torch.device) -> None:
    """All-gather a hash of this rank's masks (`SparseEngine.masks_fingerprint()`); a mismatch means the ranks'
    topologies diverged."""
    mine = torch.tensor([int(fingerprint[:15], 16)], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if len({int(g) for g in gathered}) != 1:
        raise UserError(
            f"masks differ across ranks at step {step}; the ranks' sparse topologies diverged (dist.check_masks)"
        )
