"""The sparse engine in a Hugging Face Accelerate loop (diffusers' training examples), with gradient accumulation,
mixed precision and `accelerator.save_state` / `load_state`.

    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMA(accelerator.unwrap_model(model))
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
            ema.update(accelerator.unwrap_model(model))

The engine sees one optimiser step per accumulated batch: its calls run only when `accelerator.sync_gradients`
is set, when the gradients of the whole accumulated batch are summed (and all-reduced across processes), so
RigL's dense gradient is that of the whole batch. DDP only: FSDP and DeepSpeed shard the weights the masks cover.
Accelerate itself is not imported here; the functions take the `Accelerator` the script made.
"""

from typing import Any, Optional

import torch

from sparsedm.sparse import EMA, SparseConfig, SparseEngine


def prepare_engine(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: SparseConfig,
    total_steps: Optional[int] = None,
    ema: Optional[EMA] = None,
) -> SparseEngine:
    """The engine over the prepared model and optimiser, registered (with the EMA) for `save_state`.

    Call it after `accelerator.prepare`, so that masks are made on the device the weights are on. The engine
    gets the model without its DDP wrapper (parameter names as in a single process) and the optimiser inside
    Accelerate's; `total_steps` counts optimiser steps, not micro-batches. Every process draws the same masks
    (the config's seed), and `load_state` restores the engine after the weights and the optimiser.
    """
    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    engine = SparseEngine(accelerator.unwrap_model(model), inner, config, total_steps=total_steps, ema=ema)
    accelerator.register_for_checkpointing(engine, *([ema] if ema is not None else []))
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
