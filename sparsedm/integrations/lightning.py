"""The sparse engine as a PyTorch Lightning callback: `Trainer(callbacks=[SparseTraining(config)])`.

The callback builds the engine when fitting starts, over the LightningModule (or the submodule named by
`module`, e.g. "model" for a CompVis LatentDiffusion, whose first stage is frozen) and the module's one
optimiser, and calls it where sparsedm's own trainer does:

- `after_backward` in `on_before_optimizer_step`: Lightning calls it once per optimiser step, after the
  backward of the last accumulated batch and, with 16-mixed, after unscaling; it clips afterwards, so
  `gradient_clip_val` sees masked gradients;
- `after_optimizer_step` in `on_train_batch_end` of a batch that ended with an optimiser step (callbacks run
  before the module's own hook, so an EMA that the module updates there is updated after the mask update);
- the EMA: a sparsedm `EMA`, a CompVis `LitEma`, a diffusers `EMAModel` or a torch_ema average (ChiroDiff's)
  held by the module (found, or named by `ema`) is kept sparse (ema_views.py);
- checkpoints: the engine's state (and a sparsedm `EMA`'s, which is no module) is the callback's state in
  Lightning's checkpoints, so `trainer.fit(ckpt_path=...)` resumes with the same masks; a checkpoint without
  it (a dense run's) continues sparse: the masks are applied again in `on_train_start`, after Lightning has
  restored the optimiser, and the engine counts from the trainer's step.

Layers stay masked: `sparse.kernels` other than masked is refused (compact layers need `sparsedm train`).
"""

from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.integrations.checks import check_saves, refuse_compact_kernels
from sparsedm.integrations.ema_views import ema_view, is_ema, is_lit_ema
from sparsedm.sparse import EMA, SparseConfig, SparseEngine
from sparsedm.sparse.selection import select_sparse_parameters

try:
    import pytorch_lightning as pl
except ImportError as error:
    raise UserError(
        "sparsedm.integrations.lightning needs pytorch-lightning; install it with pip install 'sparsedm[lightning]'"
    ) from error


class SparseTraining(pl.Callback):
    def __init__(
        self,
        config: Union[SparseConfig, Mapping[str, Any]],
        module: Optional[str] = None,
        ema: Optional[str] = None,
        total_steps: Optional[int] = None,
    ):
        """config: the engine's SparseConfig, or its fields (a YAML config's `params`);
        module: dotted attribute of the LightningModule to sparsify (None: all of it);
        ema: dotted attribute of its EMA (None: the one EMA-shaped attribute, if there is exactly one);
        total_steps: optimiser steps, for t_end as a fraction (None: the trainer's estimated_stepping_batches)."""
        self.config = config if isinstance(config, SparseConfig) else SparseConfig(**dict(config))
        refuse_compact_kernels(self.config, "the Lightning callback")
        self.module_name, self.ema_name, self.total_steps = module, ema, total_steps
        self.engine: Optional[SparseEngine] = None
        self.ema: Optional[Union[EMA, nn.Module]] = None
        self.last_update: Optional[dict] = None  # the statistics of the latest mask update
        self._pending: Optional[Dict[str, Any]] = None  # state from a checkpoint, applied when fitting starts
        self._stepped = False  # an optimiser step was taken in this batch
        self._built_fresh = False  # this fit's engine has no state from a checkpoint or an earlier fit
        self._save_check = None  # the handle of the state-dict hook that checks saves are sparse

    # -- building the engine -----------------------------------------------------------------------------

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.engine is not None and self._pending is None:
            if self.engine.optimizer is trainer.optimizers[0]:
                self._built_fresh = False
                return
            self._pending = self.state_dict()  # fit again, with a new optimiser: the masks carry over
        if len(trainer.optimizers) != 1:
            raise UserError(
                f"SparseTraining needs the module to have one optimiser, not {len(trainer.optimizers)}; "
                "return a single optimiser from configure_optimizers"
            )
        module = _attribute(pl_module, self.module_name, "module") if self.module_name else pl_module
        self.ema = self._find_ema(pl_module)
        c = self.config
        sparse = select_sparse_parameters(module, c.include, c.exclude, c.exclude_time_embedding)
        fix = "make it from the module SparseTraining sparsifies, or name that module with SparseTraining(module=...)"
        view = ema_view(self.ema, module, sparse, fix)
        total = self.total_steps or int(trainer.estimated_stepping_batches)
        # Lightning has loaded the weights already: keep them from the new engine's initial masks
        kept = self._sparse_values(sparse, view) if self._pending else []
        self.engine = SparseEngine(module, trainer.optimizers[0], self.config, total_steps=total, ema=view)
        self._built_fresh = not self._pending
        if self._pending:
            self._load(kept)
        if self._save_check is not None:
            self._save_check.remove()
        self._save_check = check_saves(self.engine, module, "SparseTraining (it finds one EMA, or ema=...)")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Lightning restores the optimiser and the loops' progress after on_fit_start: the masks again, so that
        the moments of a dense checkpoint continued sparse do not move masked weights; its engine counts from
        the trainer's step, so that ΔT and t_end line up with the continued run."""
        if self._built_fresh:
            self.engine.step = trainer.global_step
        self.engine.apply_masks()

    def _find_ema(self, pl_module) -> Optional[Union[EMA, nn.Module]]:
        if self.ema_name:
            ema = _attribute(pl_module, self.ema_name, "ema")
            if not is_ema(ema):
                raise UserError(
                    f"{self.ema_name} is a {type(ema).__name__}, not a sparsedm EMA, a LitEma, a diffusers EMAModel "
                    "or a torch_ema average"
                )
            return ema
        found = [v for v in vars(pl_module).values() if is_ema(v)]
        found += [m for m in pl_module.children() if is_lit_ema(m)]
        if len(found) > 1:
            raise UserError("the module has several EMAs; name the one to keep sparse with SparseTraining(ema=...)")
        return found[0] if found else None

    @staticmethod
    def _sparse_values(sparse: Dict[str, nn.Parameter], view) -> list:
        tensors = list(sparse.values())
        if view is not None:
            ema_params = dict(view.named_parameters())
            tensors += [ema_params[n] for n in sparse]
        return [(t, t.detach().clone()) for t in tensors]

    def _load(self, kept: list) -> None:
        state, self._pending = self._pending, None
        self.engine.load_state_dict(state["engine"])
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)
        if state.get("ema") is not None and isinstance(self.ema, EMA):
            self.ema.load_state_dict(state["ema"])
        self.engine.apply_masks()

    # -- the two calls of a training step ---------------------------------------------------------------

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.engine.after_backward()
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stepped:
            self._stepped = False
            self.last_update = self.engine.after_optimizer_step() or self.last_update

    # -- Lightning checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        if self.engine is None:
            return {}
        return {
            "engine": self.engine.state_dict(),
            "ema": self.ema.state_dict() if isinstance(self.ema, EMA) else None,  # a LitEma is in the module's
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict:
            self._pending = state_dict


def _attribute(root, dotted: str, what: str):
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise UserError(f"SparseTraining({what}={dotted!r}): the module has no attribute {dotted!r}")
        obj = getattr(obj, part)
    return obj
