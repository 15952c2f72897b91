"""The sparse engine as a PyTorch Lightning callback: `Trainer(callbacks=[SparseTraining(config)])`.

The callback builds the engine when fitting starts, over the LightningModule (or the submodule named by
`module`, e.g. "model" for a CompVis LatentDiffusion, whose first stage is frozen) and the module's one
optimiser, and calls it where sparsedm's own trainer does:

- `after_backward` in `on_before_optimizer_step`: Lightning calls it once per optimiser step, after the
  backward of the last accumulated batch and, with 16-mixed, after unscaling; it clips afterwards, so
  `gradient_clip_val` sees masked gradients;
- `after_optimizer_step` in `on_train_batch_end` of a batch that ended with an optimiser step (callbacks run
  before the module's own hook, so an EMA that the module updates there is updated after the mask update);
- the EMA: a sparsedm `EMA`, a CompVis `LitEma` or a torch_ema average (ChiroDiff's) held by the module (found,
  or named by `ema`) is kept sparse;
- checkpoints: the engine's state (and a sparsedm `EMA`'s, which is no module) is the callback's state in
  Lightning's checkpoints, so `trainer.fit(ckpt_path=...)` resumes with the same masks.
"""

from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import EMA, SparseConfig, SparseEngine
from sparsedm.sparse.selection import select_sparse_parameters

try:
    import pytorch_lightning as pl
except ImportError as error:
    raise UserError(
        "sparsedm.integrations.lightning needs pytorch-lightning; install it with pip install 'sparsedm[lightning]'"
    ) from error


class LitEmaView:
    """A CompVis LitEma seen as the engine expects an EMA: its buffers under the tracked model's parameter names
    (LitEma keeps each weight as a buffer named without dots, mapped by `m_name2s_name`)."""

    def __init__(self, lit_ema: nn.Module):
        self.lit_ema = lit_ema

    def named_parameters(self):
        buffers = dict(self.lit_ema.named_buffers())
        return ((name, buffers[key]) for name, key in self.lit_ema.m_name2s_name.items() if key in buffers)


class ShadowListView:
    """torch_ema's ExponentialMovingAverage (ChiroDiff's) seen as the engine expects an EMA: its `shadow_params`
    are in the order of the parameters it was made from, whose first ones must be the sparse module's."""

    def __init__(self, ema: Any, module: nn.Module):
        named = list(module.named_parameters())
        shadows = ema.shadow_params
        if len(shadows) < len(named) or any(s.shape != p.shape for s, (_, p) in zip(shadows, named)):
            raise UserError(
                "the EMA's shadow_params do not start with the sparse module's parameters; make the EMA from "
                "module.parameters() first, or name the module it averages with SparseTraining(module=...)"
            )
        self.ema, self.names = ema, [n for n, _ in named]

    def named_parameters(self):
        return zip(self.names, self.ema.shadow_params)  # read each time: torch_ema's .to() replaces the list


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
        self.module_name, self.ema_name, self.total_steps = module, ema, total_steps
        self.engine: Optional[SparseEngine] = None
        self.ema: Optional[Union[EMA, nn.Module]] = None
        self.last_update: Optional[dict] = None  # the statistics of the latest mask update
        self._pending: Optional[Dict[str, Any]] = None  # state from a checkpoint, applied when fitting starts
        self._stepped = False  # an optimiser step was taken in this batch

    # -- building the engine -----------------------------------------------------------------------------

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.engine is not None and self._pending is None:
            if self.engine.optimizer is trainer.optimizers[0]:
                return
            self._pending = self.state_dict()  # fit again, with a new optimiser: the masks carry over
        if len(trainer.optimizers) != 1:
            raise UserError(
                f"SparseTraining needs the module to have one optimiser, not {len(trainer.optimizers)}; "
                "return a single optimiser from configure_optimizers"
            )
        module = _attribute(pl_module, self.module_name, "module") if self.module_name else pl_module
        self.ema = self._find_ema(pl_module)
        ema_view = _ema_view(self.ema, module)
        c = self.config
        sparse = select_sparse_parameters(module, c.include, c.exclude, c.exclude_time_embedding)
        if ema_view is not None and (missing := sorted(set(sparse) - set(dict(ema_view.named_parameters())))):
            raise UserError(
                f"the EMA has no entry for {missing[0]} (and {len(missing) - 1} more sparse tensors); make it from "
                "the module SparseTraining sparsifies, or name that module with SparseTraining(module=...)"
            )
        total = self.total_steps or int(trainer.estimated_stepping_batches)
        # Lightning has loaded the weights already: keep them from the new engine's initial masks
        kept = self._sparse_values(sparse, ema_view) if self._pending else []
        self.engine = SparseEngine(module, trainer.optimizers[0], self.config, total_steps=total, ema=ema_view)
        if self._pending:
            self._load(kept)

    def _find_ema(self, pl_module) -> Optional[Union[EMA, nn.Module]]:
        if self.ema_name:
            ema = _attribute(pl_module, self.ema_name, "ema")
            if not _is_ema(ema):
                raise UserError(
                    f"{self.ema_name} is a {type(ema).__name__}, not a sparsedm EMA, a LitEma or a torch_ema average"
                )
            return ema
        found = [v for v in vars(pl_module).values() if _is_ema(v)]
        found += [m for m in pl_module.children() if _is_lit_ema(m)]
        if len(found) > 1:
            raise UserError("the module has several EMAs; name the one to keep sparse with SparseTraining(ema=...)")
        return found[0] if found else None

    @staticmethod
    def _sparse_values(sparse: Dict[str, nn.Parameter], ema_view) -> list:
        tensors = list(sparse.values())
        if ema_view is not None:
            ema_params = dict(ema_view.named_parameters())
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


def _is_lit_ema(obj) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "m_name2s_name")


def _is_ema(obj) -> bool:
    return isinstance(obj, EMA) or _is_lit_ema(obj) or isinstance(getattr(obj, "shadow_params", None), list)


def _ema_view(ema, module: nn.Module):
    """The object the engine keeps sparse: a sparsedm EMA itself, a view of the others."""
    if ema is None or isinstance(ema, EMA):
        return ema
    return LitEmaView(ema) if _is_lit_ema(ema) else ShadowListView(ema, module)


def _attribute(root, dotted: str, what: str):
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise UserError(f"SparseTraining({what}={dotted!r}): the module has no attribute {dotted!r}")
        obj = getattr(obj, part)
    return obj
