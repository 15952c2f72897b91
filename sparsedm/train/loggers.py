"""Where a run's numbers go: RUN/metrics.jsonl always, TensorBoard event files in RUN/tb/ by default, and
Weights & Biases when asked.

`train.log_to` lists the destinations: jsonl (required: plots, sweeps and resume read it), tensorboard and
wandb. TensorBoard and wandb get the same tags, at the step they belong to:

    train/loss, train/lr, train/sparsity     every train.log_every steps (the loss averaged over them)
    val/loss                                 at every validation (the EMA weights, fixed noise)
    mask_update/replaced                     connections dropped and regrown at a mask update
    mask_update/exploration_rate             share of the sparse weights ever active so far (sparse/exploration.py)
    samples                                  a grid of SAMPLE_PICTURES samples of the EMA weights, every
                                             train.sample_every steps

Watch with `tensorboard --logdir RUN/tb` (or a sweep folder: one curve per run). Only rank 0 writes.
wandb writes RUN/wandb/ and runs online where its server answers, offline (`wandb sync` later) where it does
not; WANDB_MODE, WANDB_PROJECT (default sparsedm) and wandb's other variables are obeyed as set.
"""

import logging
import math
import os
import socket
from typing import List, Optional
from urllib.parse import urlparse

import numpy as np
import torch
import yaml

from sparsedm.errors import UserError
from sparsedm.runs.run_dir import CONFIG, TENSORBOARD, RunDir

log = logging.getLogger(__name__)

LOG_TO = ("jsonl", "tensorboard", "wandb")
WANDB = "wandb"  # RUN/wandb/: wandb's own folder of the run
WANDB_SERVER_TIMEOUT_S = 3.0  # how long to wait for wandb's server before logging offline
FLUSH_S = 10  # seconds between writes of the event file, so a running job can be watched
SAMPLE_PICTURES = 16  # samples in one TensorBoard grid (4 x 4)
STEP_SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "sparsity": "train/sparsity",
    "val_loss": "val/loss",
    "train_split_loss": "val/train_split_loss",  # the same on training items: the gap to val/loss is over-fitting
}
UPDATE_SCALARS = {"replaced": "mask_update/replaced", "exploration_rate": "mask_update/exploration_rate"}


def check_log_to(log_to: List[str]) -> List[str]:
    """`train.log_to` as a list, or a one-line UserError (TrainConfig runs it when a config is loaded)."""
    unknown = [name for name in log_to if name not in LOG_TO]
    if unknown or "jsonl" not in log_to:
        raise UserError(
            f"train.log_to={list(log_to)}: use jsonl, optionally with tensorboard and wandb "
            "(e.g. [jsonl, tensorboard] or [jsonl, wandb]); "
            "jsonl is the run's record that plots, sweeps and --resume read"
        )
    return list(log_to)


def picture_grid(pictures: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 N x H x W x C pictures tiled into one H' x W' x 3 picture, as square as possible."""
    n, height, width, channels = pictures.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 128, dtype=np.uint8)
    for i, picture in enumerate(pictures):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[top : top + height, left : left + width] = picture if channels == 3 else picture[..., :1]
    return grid


@torch.no_grad()
def sample_pictures(task, model: torch.nn.Module, device: torch.device, num: int = SAMPLE_PICTURES) -> np.ndarray:
    """`num` samples of `model` as uint8 pictures, with fixed noise so grids of different steps compare."""
    samples = task.sample(model, num, torch.Generator().manual_seed(0), device, task.cfg.sample, progress=False)
    return task.to_images(samples)


def wandb_mode() -> str:
    """WANDB_MODE where set; otherwise online if wandb's server (WANDB_BASE_URL) takes a connection, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=WANDB_SERVER_TIMEOUT_S).close()
    except OSError:
        return "offline"
    return "online"


def start_wandb(run: RunDir, resume: bool = False):
    """The wandb run of RUN, named after the folder; its id is kept in RUN/wandb/run_id, so a resumed run
    continues the same wandb run and a new one (--overwrite included) starts another (WANDB_RUN_ID, where set,
    names a new run's id)."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "train.log_to includes wandb, which is not installed; pip install wandb==0.31.0 (or the extra: "
            'pip install -e ".[wandb]"), or leave wandb out of train.log_to'
        ) from None
    mode = wandb_mode()
    (run.path / WANDB).mkdir(exist_ok=True)
    id_file = run.path / WANDB / "run_id"
    known_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    wandb_run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "sparsedm"),
        name=run.path.name,
        id=known_id,
        dir=str(run.path),
        config=yaml.safe_load((run.path / CONFIG).read_text()),
        mode=mode,
        resume="allow",
    )
    if known_id is None:
        id_file.write_text(wandb_run.id)
    log.info("wandb: %s run %s in %s", mode, wandb_run.id, run.path / WANDB)
    return wandb_run


class RunLogger:
    """Writes each record to metrics.jsonl and, when asked, its scalars to TensorBoard and wandb."""

    def __init__(self, run: RunDir, log_to: List[str], sample_every: int = 0, purge_step: Optional[int] = None):
        self.run, self.writer, self.wandb, self.sample_every = run, None, None, sample_every
        if "tensorboard" in log_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "train.log_to includes tensorboard, which is not installed; "
                    "pip install tensorboard==2.21.0, or set train.log_to=[jsonl]"
                ) from None
            # purge_step: a resumed run hides what the interrupted one logged after its checkpoint
            self.writer = SummaryWriter(str(run.path / TENSORBOARD), purge_step=purge_step, flush_secs=FLUSH_S)
        if "wandb" in log_to:
            self.wandb = start_wandb(run, resume=purge_step is not None)

    def wants_pictures(self, step: int) -> bool:
        trackers = self.writer is not None or self.wandb is not None
        return trackers and self.sample_every > 0 and step % self.sample_every == 0

    def log(self, record: dict) -> None:
        self.run.log(record)
        tags = UPDATE_SCALARS if record.get("event") == "mask_update" else STEP_SCALARS
        scalars = {tag: record.get(key) for key, tag in tags.items()}
        scalars = {tag: v for tag, v in scalars.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for tag, value in scalars.items():
            if self.writer is not None:
                self.writer.add_scalar(tag, value, record["step"])
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=record["step"])

    def pictures(self, step: int, pictures: np.ndarray) -> None:
        grid = picture_grid(pictures)
        if self.writer is not None:
            self.writer.add_image("samples", grid, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Image(grid)}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
