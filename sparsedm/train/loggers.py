"""Where a run's numbers go: RUN/metrics.jsonl always, and TensorBoard event files in RUN/tb/ by default.

`train.log_to` lists the destinations: jsonl (required: plots, sweeps and resume read it) and tensorboard.
TensorBoard gets, at the step they belong to:

    train/loss, train/lr, train/sparsity     every train.log_every steps (the loss averaged over them)
    val/loss                                 at every validation (the EMA weights, fixed noise)
    mask_update/replaced                     connections dropped and regrown at a mask update
    mask_update/exploration_rate             share of the sparse weights ever active so far (sparse/exploration.py)
    samples                                  a grid of SAMPLE_PICTURES samples of the EMA weights, every
                                             train.sample_every steps

Watch with `tensorboard --logdir RUN/tb` (or a sweep folder: one curve per run). Offline; only rank 0 writes.
"""

import math
from typing import List, Optional

import numpy as np
import torch

from sparsedm.errors import UserError
from sparsedm.runs.run_dir import TENSORBOARD, RunDir

LOG_TO = ("jsonl", "tensorboard")
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
            f"train.log_to={list(log_to)}: use jsonl, optionally with tensorboard (e.g. [jsonl, tensorboard]); "
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


class RunLogger:
    """Writes each record to metrics.jsonl and, when asked, its scalars to TensorBoard."""

    def __init__(self, run: RunDir, log_to: List[str], sample_every: int = 0, purge_step: Optional[int] = None):
        self.run, self.writer, self.sample_every = run, None, sample_every
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

    def wants_pictures(self, step: int) -> bool:
        return self.writer is not None and self.sample_every > 0 and step % self.sample_every == 0

    def log(self, record: dict) -> None:
        self.run.log(record)
        if self.writer is None:
            return
        tags = UPDATE_SCALARS if record.get("event") == "mask_update" else STEP_SCALARS
        for key, tag in tags.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, record["step"])

    def pictures(self, step: int, pictures: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image("samples", picture_grid(pictures), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
