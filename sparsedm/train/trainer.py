"""The training loop: a task's loss (a denoiser's, or the autoencoder's), sparse-trained with the engine (or
dense, for an experiment without a `sparse` block), with EMA and checkpoints.

One step: loss -> backward -> engine.after_backward (dense gradient for RigL, mask gradients) -> clip ->
optimiser step -> engine.after_optimizer_step (drop/grow every ΔT) -> the task's after_optimizer_step -> EMA
update.

Everything a step reads is a function of (seed, step): the batch (`BatchSchedule`) and the noise (a generator
seeded per step), so a resumed run needs only the checkpoint to continue bit-identically.
"""

import logging
import math
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional, Tuple

import torch

from sparsedm.config_loader import to_dict
from sparsedm.errors import UserError
from sparsedm.progress import progress_bar
from sparsedm.runs.batches import BatchSchedule
from sparsedm.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sparsedm.runs.distributed import (
    DistInfo,
    check_masks_agree,
    init_distributed,
    main_process_first,
    resolve_device,
)
from sparsedm.runs.plots import plot_run
from sparsedm.runs.prepare import prepare_run_dir
from sparsedm.runs.provenance import provenance
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse import EMA, SparseConfig, SparseEngine
from sparsedm.sparse.methods import dense_method
from sparsedm.tasks import build_task
from sparsedm.train.loggers import RunLogger, sample_pictures
from sparsedm.train.state_bytes import training_state_bytes
from sparsedm.train.step_clock import StepClock
from sparsedm.train.summary import build_summary

log = logging.getLogger(__name__)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Trainer:
    def __init__(self, cfg, out: str, resume: bool = False, overwrite: bool = False, progress: bool = True):
        self.cfg, self.tc = cfg, cfg.train
        self.dist: DistInfo = init_distributed(cfg.dist.backend, cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.dist)
        if self.tc.precision == "fp16" and self.device.type != "cuda":
            raise UserError("train.precision=fp16 needs a GPU; use bf16 on CPU")
        self.run = RunDir(out)
        self.resume = resume
        self.progress = progress and self.dist.is_main
        self.stop_requested = False
        if self.dist.is_main:
            prepare_run_dir(self.run, cfg, resume, overwrite)
        else:
            logging.getLogger("sparsedm").setLevel(logging.WARNING)  # rank 0 speaks for all

    # -- set-up ---------------------------------------------------------------------------------------

    def _build(self) -> None:
        cfg, tc = self.cfg, self.tc
        self.task = build_task(cfg)
        with main_process_first(self.dist, self.device):  # one rank fills the data caches
            self.train_set, self.val_set = self.task.load_data(self.progress, self.device)
        # seeded here, not before load_data: filling a cache builds an autoencoder, which draws from the global
        # RNG, and the weights must not depend on whether the cache was there (a resumed run's is)
        torch.manual_seed(cfg.seed)
        self.model = self.task.build_model().to(self.device)
        self.batches = BatchSchedule(len(self.train_set), tc.batch_size, cfg.seed)
        self.total_steps = tc.epochs * self.batches.batches_per_epoch if tc.epochs else tc.steps
        length = (
            f"train.epochs={tc.epochs} x {self.batches.batches_per_epoch} batches per epoch"
            if tc.epochs
            else f"train.steps={tc.steps}"
        )
        stop = f", stopping after step {tc.stop_at} (train.stop_at)" if tc.stop_at else ""
        log.info("training %d steps (%s)%s", self.total_steps, length, stop)
        if tc.keep_steps and tc.keep_steps[-1] > self.total_steps:
            raise UserError(
                f"train.keep_steps={list(tc.keep_steps)} goes past the run's {self.total_steps} steps; "
                "keep only steps the run reaches"
            )
        self.optimizer = self.task.build_optimizer(self.model, self.device)
        self.ema = EMA(self.model, decay=tc.ema_decay)
        self.engine = SparseEngine(
            self.model, self.optimizer, sparse_settings(cfg), total_steps=self.total_steps, ema=self.ema
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if tc.precision == "fp16" else None
        self.forward_model = self.model
        self.step, self.wall_before = 0, 0.0
        self.clock = StepClock()
        self.state_bytes = None  # training_state_bytes after this process's first step

    def _use_kernels(self) -> None:
        """sparse.kernels other than masked: the engine makes sparse layers keep only their active weights, each
        on the plan forced or measured on a training batch (rank 0 measures, every rank takes its plans).
        After a restore, whose checkpoint is in the masked format; before DDP wraps the model."""
        plan = self.engine.config.kernel_plan
        if plan.compact and not self.engine.masks:  # a dense run of a config shared with sparse ones (a sweep's)
            log.info(
                "sparse.kernels=%s has no sparse layer to act on in a dense run: it trains as masked", plan.spelling
            )
        if not plan.compact or not self.engine.masks:
            return
        if self.tc.precision != "fp32":
            raise UserError(
                f"sparse.kernels={plan.spelling} trains in fp32 only (its sparse products take no autocast); use "
                "train.precision=fp32 or sparse.kernels=masked"
            )
        batch = self._batch(self.train_set, self.batches.indices(self.step, self.dist.rank, self.dist.world_size))
        plans = self.engine.compact(
            plan,
            lambda: self.task.loss(self.model, batch, self._seeds(self.step)),
            cache_dir=Path(self.cfg.data.cache_dir) / "kernels",
        )
        if self.dist.is_main:
            chosen = Counter(p.name for p in plans.values())
            log.info("sparse.kernels=%s: %d compact layers (%s)", plan.spelling, len(plans), dict(chosen))

    def _wrap(self) -> None:
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _restore(self) -> bool:
        """Load the newest checkpoint; False when there is none (the run stopped before its first one, and
        prepare_run_dir said it starts from step 0)."""
        path = latest_checkpoint(self.run.checkpoints)
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.engine.load_state_dict(state["engine"], new_end_step=True)  # said below, `_note_schedule_change`
        self.task.load_state_dict(state["task"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.wall_before = state["step"], state.get("wall_time_s", 0.0)
        self.clock.load_state_dict(state.get("step_seconds", {}))
        if "step_seconds" not in state and self.step:
            log.warning(
                "%s predates the training-seconds record: train_cpu_s and train_wall_s will count steps %d on only",
                path,
                self.step + 1,
            )
        if self.dist.is_main:
            self.run.truncate_metrics(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        self._note_schedule_change(state["config"]["train"])
        return True

    def _note_schedule_change(self, old_train: dict) -> None:
        """t_end and the cosine p_t are fractions of the total steps: a resume that changes train.steps moves them."""
        schedule = self.engine.schedule
        if schedule is None or self.tc.epochs:
            return
        old_end = self.engine.config.end_step(old_train["steps"])
        if old_end != schedule.end_step:
            log.warning(
                "train.steps %d -> %d moves t_end from step %d to %d: from step %d on, the topology schedule is "
                "not a straight run's; to split one run into jobs bit-exactly keep train.steps and set train.stop_at",
                old_train["steps"],
                self.tc.steps,
                old_end,
                schedule.end_step,
                self.step,
            )

    def _checkpoint(self, elapsed: float) -> None:
        if not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "engine": self.engine.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "task": self.task.state_dict(),
            "config": to_dict(self.cfg),
            "wall_time_s": elapsed,
            "step_seconds": self.clock.state_dict(),
        }
        save_checkpoint(
            state,
            self.run.checkpoints,
            self.step,
            self.tc.keep_checkpoints,
            self.tc.compress_checkpoints,
            self.tc.keep_steps,
        )

    # -- one step -------------------------------------------------------------------------------------

    def _batch(self, dataset, indices):
        batch = self.task.collate([dataset[i] for i in indices])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _seeds(self, step: int) -> torch.Tensor:
        """Per-sample noise seeds of this rank's share of step `step`'s global batch.

        They depend only on (seed, step, position in the global batch): resume needs no RNG state, and
        N ranks draw exactly the noise one process would draw for the whole batch.
        """
        positions = torch.arange(self.tc.batch_size)[self.dist.rank :: self.dist.world_size]
        return (self.cfg.seed * 1_000_003 + step) * 100_003 + positions

    def train_step(self):
        """One optimiser step; returns (loss, the engine's update statistics or None, the task's event or None)."""
        batch = self._batch(self.train_set, self.batches.indices(self.step, self.dist.rank, self.dist.world_size))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.tc.precision, self.device):
            loss = self.task.loss(self.forward_model, batch, self._seeds(self.step))
        if not torch.isfinite(loss):
            kept = latest_checkpoint(self.run.checkpoints)
            raise UserError(
                f"non-finite loss at step {self.step + 1}; last good checkpoint: {kept or 'none'}. Lower train.lr or use train.precision=fp32"
            )
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.engine.after_backward()
        if self.tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped on overflow; the engine skipped its update too
            self.scaler.update()
        else:
            self.optimizer.step()
        update = self.engine.after_optimizer_step()
        task_event = self.task.after_optimizer_step(self.model, self.step + 1)
        self.ema.update(self.model)
        self.step += 1
        return float(loss.detach()), update, task_event

    @torch.no_grad()
    def validation_loss(self, split: str = "val") -> float:
        """Mean loss of the EMA model on the first `val_batches` batches of the validation items (or, with
        split="train", of the training items), with fixed noise: item i of either split gets the same noise, so
        the two differ only by the data, and their gap measures over-fitting."""
        items = {"val": self.val_set, "train": self.train_set}[split]
        bs, total, count = self.tc.batch_size, 0.0, 0
        for b in range(min(self.tc.val_batches, math.ceil(len(items) / bs))):
            indices = range(b * bs, min((b + 1) * bs, len(items)))
            batch = self._batch(items, indices)
            with autocast(self.tc.precision, self.device):
                # fixed noise: negative seeds are never used in training
                total += float(self.task.loss(self.ema.module, batch, -1 - torch.tensor(list(indices))))
            count += 1
        return total / max(count, 1)

    # -- the loop -------------------------------------------------------------------------------------

    @contextmanager
    def _graceful_interrupt(self):
        """First Ctrl-C: finish the step, write a checkpoint, stop. A second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("stopping after this step (Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def fit(self) -> Optional[dict]:
        """Train to train.steps (or epochs); returns the summary, or None when stopped early with a checkpoint."""
        self._build()
        restored = self.resume and self._restore()
        if not restored and self.dist.is_main:
            self.run.write_config(self.cfg)
        self._use_kernels()
        self._wrap()
        if self.dist.is_main:
            purge = self.step + 1 if restored else None  # TensorBoard hides what came after the checkpoint
            self.logger = RunLogger(self.run, self.tc.log_to, self.tc.sample_every, purge)
            if not restored:
                self._log_validation()  # the baseline the final one is compared with
        stop_at = min(self.total_steps, self.tc.stop_at) if self.tc.stop_at else self.total_steps

        start = time.time()
        elapsed = lambda: self.wall_before + time.time() - start  # noqa: E731
        bar = progress_bar(
            total=self.total_steps,
            initial=self.step,
            desc=f"train {self.engine.method}",
            every=self.tc.log_every,  # in a log file: a line per metrics.jsonl record
            disable=not self.progress,
            dynamic_ncols=True,
        )
        window, self.last_loss = [], float("nan")
        self.model.train()
        with self._graceful_interrupt():
            while self.step < stop_at and not self.stop_requested:
                with self.clock:
                    loss, update, task_event = self.train_step()
                if self.state_bytes is None:  # the first step made the gradients and Adam's moments
                    self.state_bytes = training_state_bytes(self.model, self.optimizer, self.ema, self.engine)
                window.append(loss)
                self._after_step(update, task_event, window, bar, elapsed)
                due = self.step % self.tc.checkpoint_every == 0 or self.step in self.tc.keep_steps
                if due and self.step < self.total_steps:
                    self._checkpoint(elapsed())
                bar.update(1)
        bar.close()
        self._checkpoint(elapsed())
        if self.step < self.total_steps:
            log.warning(
                "stopped at step %d of %d; continue with `sparsedm train ... --out %s --resume`",
                self.step,
                self.total_steps,
                self.run.path,
            )
            self._close_logs(finished=False)
            return None
        self.engine.densify()  # the model's own layers for the summary, sampling and export
        summary = self._summary(elapsed()) if self.dist.is_main else {}
        self._close_logs(finished=True)
        return summary

    def _close_logs(self, finished: bool) -> None:
        """Close TensorBoard's file and, at the end of training, draw the run's pictures (runs/plots.py)."""
        if not self.dist.is_main:
            return
        self.logger.close()
        if finished:
            plot_run(self.run.path)

    def _after_step(self, update, task_event, window, bar, elapsed) -> None:
        if update is not None and self.cfg.dist.check_masks and self.dist.enabled:
            check_masks_agree(self.engine.masks_fingerprint(), self.step, self.device)
        if not self.dist.is_main:
            return
        if update is not None:
            self.logger.log({"event": "mask_update", **update})
        if task_event is not None:
            self.logger.log(task_event)
        if self.step % self.tc.log_every == 0 or self.step == self.total_steps:
            self.last_loss = sum(window) / len(window)
            self.logger.log(
                {
                    "step": self.step,
                    "loss": self.last_loss,
                    "lr": self.tc.lr,
                    "sparsity": self.engine.sparsity(),
                    "elapsed_s": elapsed(),
                    **self.clock.record(),
                }
            )
            bar.set_postfix(loss=f"{self.last_loss:.4f}")
            window.clear()
        if self.tc.val_every and self.step % self.tc.val_every == 0 and self.step < self.total_steps:
            self._log_validation()
        if self.logger.wants_pictures(self.step):
            self.logger.pictures(self.step, sample_pictures(self.task, self.ema.module, self.device))

    def _log_validation(self) -> Tuple[float, float]:
        val_loss, train_split_loss = self.validation_loss("val"), self.validation_loss("train")
        metrics = self.task.validation_metrics(self.ema.module)
        self.logger.log({"step": self.step, "val_loss": val_loss, "train_split_loss": train_split_loss, **metrics})
        return val_loss, train_split_loss

    def _summary(self, wall: float) -> dict:
        val_loss, train_split_loss = self._log_validation()
        example = self._batch(self.train_set, self.batches.indices(0)[:1])
        losses = {"loss_final": self.last_loss, "val_loss_final": val_loss, "train_split_loss_final": train_split_loss}
        summary = build_summary(
            self.cfg,
            self.task,
            self.model,
            self.engine,
            self.task.flops_inputs(example),
            self.step,
            losses,
            wall,
            self.clock.record(),
            self.state_bytes,
        )
        summary["provenance"] = provenance(self.device)
        self.task.finish(self.ema.module, self.run.path, summary)
        self.run.write_summary(summary)
        return summary


def sparse_settings(cfg) -> SparseConfig:
    """The experiment's `sparse` block; an experiment without one (the autoencoder) is trained dense."""
    sparse = getattr(cfg, "sparse", None)
    return SparseConfig(method=dense_method().name) if sparse is None else sparse
