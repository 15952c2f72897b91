"""The training loop: a task's diffusion loss, sparse-trained with the engine, with EMA and checkpoints.

One step: loss -> backward -> engine.after_backward (dense gradient for RigL, mask gradients) -> clip ->
optimiser step -> engine.after_optimizer_step (re-mask, drop/grow every ΔT) -> EMA update.
"""

import hashlib
import logging
import math
import shutil
import time
from contextlib import nullcontext

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ..config import sparse_config
from ..errors import UserError
from ..sparse import EMA, SparseEngine, count_parameters, forward_flops, masked_densities, train_flops_per_step
from ..tasks import build_task
from .batches import BatchSchedule
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistInfo, init_distributed, resolve_device
from .run_dir import CONFIG, RunDir

log = logging.getLogger(__name__)


def weights_fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prepare_run_dir(run: RunDir, cfg: DictConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; on resume the config must be the run's (train.steps may grow)."""
    if not run.exists():
        if resume:
            raise UserError(f"--resume: {run.path} holds no run to resume; drop --resume to start one")
        return
    if overwrite:
        for name in ("checkpoints", "samples"):
            shutil.rmtree(run.path / name, ignore_errors=True)
        for name in (CONFIG, "metrics.jsonl", "summary.json", "eval.json"):
            (run.path / name).unlink(missing_ok=True)
        return
    if not resume:
        raise UserError(f"{run.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
    old = OmegaConf.to_container(run.read_config())
    new = OmegaConf.to_container(cfg)
    old["train"].pop("steps", None), new["train"].pop("steps", None)
    if old != new:
        raise UserError(f"--resume: the config differs from the one in {run.path / CONFIG}; resume with the run's config (only train.steps may change)")


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    def __init__(self, cfg: DictConfig, out: str, resume: bool = False, overwrite: bool = False, progress: bool = True):
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.dist.backend, cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.dist)
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise UserError("train.precision=fp16 needs a GPU; use bf16 on CPU")
        self.run = RunDir(out)
        self.progress = progress and self.dist.is_main
        if self.dist.is_main:
            prepare_run_dir(self.run, cfg, resume, overwrite)
        self.resume = resume

    def _batch(self, dataset, indices):
        batch = self.task.collate([dataset[i] for i in indices])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _generator(self, step: int) -> torch.Generator:
        # noise and timesteps of step s depend only on (seed, s, rank): resume needs no RNG state
        return torch.Generator(self.device).manual_seed(self.cfg.seed * 1_000_003 + step * 1009 + self.dist.rank)

    @torch.no_grad()
    def validation_loss(self) -> float:
        model = self.ema.module
        total, count = 0.0, 0
        bs = self.cfg.train.batch_size
        for b in range(min(self.cfg.train.val_batches, math.ceil(len(self.val_set) / bs))):
            indices = list(range(b * bs, min((b + 1) * bs, len(self.val_set))))
            batch = self._batch(self.val_set, indices)
            with _autocast(self.cfg.train.precision, self.device):
                total += float(self.task.loss(model, batch, torch.Generator(self.device).manual_seed(10_000 + b)))
            count += 1
        return total / max(count, 1)

    def fit(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        torch.manual_seed(cfg.seed)
        self.task = build_task(cfg)
        train_set, self.val_set = self.task.load_data()
        model = self.task.build_model().to(self.device)
        batches = BatchSchedule(len(train_set), tc.batch_size, cfg.seed)
        total_steps = tc.epochs * batches.batches_per_epoch if tc.epochs else tc.steps
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = EMA(model, decay=tc.ema_decay)
        engine = SparseEngine(model, optimizer, sparse_config(cfg), total_steps=total_steps, ema=self.ema)
        scaler = torch.amp.GradScaler(self.device.type) if tc.precision == "fp16" else None
        ddp_model = model
        if self.dist.enabled:
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        step, wall_before = 0, 0.0
        if self.resume:
            path = latest_checkpoint(self.run.checkpoints)
            if path is None:
                raise UserError(f"--resume: {self.run.checkpoints} has no checkpoint; start again with --overwrite")
            state = load_checkpoint(path, map_location=self.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            self.ema.load_state_dict(state["ema"])
            engine.load_state_dict(state["engine"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step, wall_before = state["step"], state.get("wall_time_s", 0.0)
            if self.dist.is_main:
                self.run.truncate_metrics(step)
                log.info("resumed from %s at step %d", path, step)
        elif self.dist.is_main:
            self.run.write_config(cfg)
            self.run.log({"step": 0, "val_loss": self.validation_loss()})  # the baseline the final one is compared with

        def checkpoint(at_step: int, elapsed: float) -> None:
            if not self.dist.is_main:
                return
            state = {
                "step": at_step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": self.ema.state_dict(),
                "engine": engine.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "task": self.task.state_dict(),
                "config": OmegaConf.to_container(cfg),
                "wall_time_s": elapsed,
            }
            save_checkpoint(state, self.run.checkpoints, at_step, tc.keep_checkpoints)

        start = time.time()
        bar = tqdm(total=total_steps, initial=step, desc=f"train {engine.method}", disable=not self.progress, dynamic_ncols=True)
        window_loss, window_n, last_loss = 0.0, 0, float("nan")
        model.train()
        while step < total_steps:
            batch = self._batch(train_set, batches.indices(step, self.dist.rank, self.dist.world_size))
            optimizer.zero_grad(set_to_none=True)
            with _autocast(tc.precision, self.device):
                loss = self.task.loss(ddp_model, batch, self._generator(step))
            if not torch.isfinite(loss):
                kept = latest_checkpoint(self.run.checkpoints)
                raise UserError(f"non-finite loss at step {step + 1}; last good checkpoint: {kept or 'none'}. Lower train.lr or use train.precision=fp32")
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)
            engine.after_backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            update = engine.after_optimizer_step()
            self.ema.update(model)
            step += 1

            window_loss += float(loss.detach())
            window_n += 1
            if self.dist.is_main:
                if update is not None:
                    if cfg.dist.check_masks and self.dist.enabled:
                        check_masks_agree(engine, step, self.device)
                    self.run.log({"event": "mask_update", **update})
                if step % tc.log_every == 0 or step == total_steps:
                    last_loss = window_loss / window_n
                    self.run.log({"step": step, "loss": last_loss, "lr": tc.lr, "sparsity": engine.sparsity(), "elapsed_s": wall_before + time.time() - start})
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    window_loss, window_n = 0.0, 0
                if tc.val_every and step % tc.val_every == 0 and step < total_steps:
                    self.run.log({"step": step, "val_loss": self.validation_loss()})
            elif cfg.dist.check_masks and update is not None:
                check_masks_agree(engine, step, self.device)
            if step % tc.checkpoint_every == 0 and step < total_steps:
                checkpoint(step, wall_before + time.time() - start)
            bar.update(1)
        bar.close()

        wall = wall_before + time.time() - start
        checkpoint(step, wall)
        if not self.dist.is_main:
            return {}
        val_loss = self.validation_loss()
        self.run.log({"step": step, "val_loss": val_loss})
        example = self._batch(train_set, batches.indices(0)[:1])
        densities = masked_densities(engine.masks)
        flops = forward_flops(model.eval(), self.task.flops_inputs(example), densities)
        params = count_parameters(model, engine.masks)
        summary = {
            "task": cfg.task,
            "data": self.task.data_name(),
            "method": engine.method,
            "sparsity": cfg.sparse.sparsity if engine.method != "dense" else 0.0,
            "distribution": cfg.sparse.distribution,
            "prune_rate": cfg.sparse.prune_rate,
            "update_interval": cfg.sparse.update_interval,
            "steps": step,
            "seed": cfg.seed,
            **params,
            "sparsity_actual": engine.sparsity(),
            **flops,
            "flops_train_step": train_flops_per_step(engine.method, flops["flops_forward_sparse"], flops["flops_forward_dense"], cfg.sparse.update_interval),
            "loss_final": last_loss,
            "val_loss_final": val_loss,
            "wall_time_s": wall,
            "weights_sha256": weights_fingerprint(model),
            "masks_sha256": engine.masks_fingerprint(),
        }
        self.run.write_summary(summary)
        return summary


def check_masks_agree(engine: SparseEngine, step: int, device: torch.device) -> None:
    """All-gather a hash of the masks; a mismatch means the ranks' topologies diverged."""
    import torch.distributed as dist

    digest = int(engine.masks_fingerprint()[:15], 16)
    mine = torch.tensor([digest], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if len({int(g) for g in gathered}) != 1:
        raise UserError(f"masks differ across ranks at step {step}; the ranks' sparse topologies diverged (dist.check_masks)")
