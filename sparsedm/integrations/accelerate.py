"""The sparse engine in a Hugging Face Accelerate loop (diffusers' training examples), with gradient accumulation,
mixed precision and `accelerator.save_state` / `load_state`.

    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters())  # diffusers'; or sparsedm's EMA(accelerator.unwrap_model(model))
    engine = sparse.prepare_engine(accelerator, model, optimizer, config, total_steps, ema)  # also checkpointed
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(loss_fn(model, batch))
            sparse.after_backward(accelerator, engine, max_grad_norm=1.0)  # unscale, mask, clip: sync steps only
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            engine.after_optimizer_step()
            ema.step(model.parameters())

The engine sees one optimiser step per accumulated batch: its calls run only when `accelerator.sync_gradients`
is set, when the gradients of the whole accumulated batch are summed (and all-reduced across processes), so
RigL's dense gradient is that of the whole batch. DDP only: FSDP and DeepSpeed shard the weights the masks cover.
Accelerate itself is not imported here, nor pytorch_lightning; the functions take the `Accelerator` the script
made. A save of the model (`save_state`, `save_pretrained`, `torch.save(model.state_dict())`) holding non-zeros
at masked positions, such as the weights of an EMA the engine was not given, copied in, is reported in one line.
"""

from typing import Any, Optional

import torch

from sparsedm.integrations.checks import check_saves, refuse_compact_kernels
from sparsedm.integrations.ema_views import ema_view
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.selection import select_sparse_parameters


def prepare_engine(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: SparseConfig,
    total_steps: Optional[int] = None,
    ema: Optional[Any] = None,
    start_step: int = 0,
) -> SparseEngine:
    """The engine over the prepared model and optimiser, registered (after the EMA) for `save_state`.

    Call it after `accelerator.prepare` (and after moving the EMA to `accelerator.device`), so that masks are
    made on the device the weights are on. The engine gets the model without its DDP wrapper (parameter names
    as in a single process) and the optimiser inside Accelerate's; `total_steps` counts optimiser steps, not
    micro-batches. Every process draws the same masks (the config's seed).

    ema: a sparsedm `EMA`, diffusers' `EMAModel` or a torch_ema average of the model, kept sparse; it is
    registered for checkpointing unless it is already, and before the engine, so that `load_state` restores
    the engine last and its masks are re-applied to the loaded weights, optimiser moments and EMA.
    start_step: optimiser steps the run took before this engine (a dense checkpoint loaded with `load_state`
    before this call, continued sparse): the engine's ΔT and t_end count from the run's step.
    """
    refuse_compact_kernels(config, "sparsedm.integrations.accelerate")
    module = accelerator.unwrap_model(model)
    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    sparse = select_sparse_parameters(module, config.include, config.exclude, config.exclude_time_embedding)
    view = ema_view(ema, module, sparse, "make it from the parameters of the model given to prepare_engine")
    engine = SparseEngine(module, inner, config, total_steps=total_steps, ema=view)
    engine.step = start_step
    registered = getattr(accelerator, "_custom_objects", [])  # the EMA of a dense run may be registered already
    new = [ema] if ema is not None and not any(obj is ema for obj in registered) else []
    accelerator.register_for_checkpointing(*new, engine)
    check_saves(engine, module, "prepare_engine(..., ema=...)")
    return engine


def after_backward(accelerator: Any, engine: SparseEngine, max_grad_norm: Optional[float] = None) -> Optional[float]:
    """On the micro-step that ends an accumulated batch: unscale (fp16), the engine's after_backward, clip.

    Returns the gradient norm before clipping when `max_grad_norm` is given. Clipping here, not with
    `accelerator.clip_grad_norm_`: that unscales again, which torch's GradScaler refuses within one step.
    Does nothing on the other micro-steps.
    """
    if not accelerator.sync_gradients:
        return None
    accelerator.unscale_gradients()
    engine.after_backward()
    if max_grad_norm is None:
        return None
    return float(torch.nn.utils.clip_grad_norm_(engine.model.parameters(), max_grad_norm))
