"""A finished run's summary.json: what was trained, its counts and FLOPs (sparse/cost.py), its losses and the
fingerprints of its weights and masks.

Training FLOPs per step follow the method's rule (sparse/methods.py) on the sparse forward FLOPs averaged over
the steps at the counts each trained with (`SparseEngine.counts_history`); where the counts never change that
is the final masks' FLOPs.
"""

import hashlib
import math
from dataclasses import asdict
from typing import Optional

import torch

from sparsedm.sparse import SparseEngine, count_parameters, train_flops_per_step
from sparsedm.sparse.cost import flop_shares, masked_densities, mean_forward_flops, sparse_forward_flops


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the raw bytes of every tensor in the state dict, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def training_flops(model: torch.nn.Module, flops_inputs, engine: SparseEngine, steps: int) -> dict:
    """Forward FLOPs of the final masks (dense and sparse) and the method's training FLOPs per step."""
    dense, shares = flop_shares(model, flops_inputs)
    f_sparse = sparse_forward_flops(dense, shares, masked_densities(engine.masks))
    numels = {n: math.prod(m.shape) for n, m in engine.masks.items()}
    f_train = mean_forward_flops(dense, shares, engine.counts_history, numels, steps) if engine.masks else f_sparse
    return {
        "flops_forward_dense": int(dense),
        "flops_forward_sparse": f_sparse,
        "flops_train_step": train_flops_per_step(engine.method, f_train, int(dense), engine.config.update_interval),
    }


def build_summary(
    cfg,
    task,
    model,
    engine: SparseEngine,
    flops_inputs,
    steps: int,
    losses: dict,
    wall: float,
    seconds: dict,
    state_bytes: Optional[dict],
) -> dict:
    """The summary of a run trained to `steps`; `losses`: loss_final and val_loss_final; `seconds`: the training
    steps' CPU and wall seconds (train/step_clock.py); `state_bytes`: the training state's bytes by part
    (train/state_bytes.py), None when this process took no step (then the summary has no `train_state_bytes`)."""
    sparse = engine.config
    flops = training_flops(model.eval(), flops_inputs, engine, steps)
    return {
        "task": cfg.task,
        "data": task.data_name(),
        "method": engine.method,
        "sparsity": sparse.sparsity if engine.method_record.sparse else 0.0,
        "distribution": sparse.distribution,
        "prune_rate": sparse.prune_rate,
        "update_interval": sparse.update_interval,
        "steps": steps,
        "seed": cfg.seed,
        **count_parameters(model, engine.masks),
        "sparsity_actual": engine.sparsity(),
        "exploration_rate": engine.exploration_rate(),
        "flops_forward_dense": flops["flops_forward_dense"],
        "flops_forward_sparse": flops["flops_forward_sparse"],
        "flops_train_step": flops["flops_train_step"],
        **losses,
        "wall_time_s": wall,  # the whole run: steps, validation, checkpoints, logging
        **seconds,
        **({} if state_bytes is None else {"train_state_bytes": state_bytes}),
        "weights_sha256": weights_fingerprint(model),
        "masks_sha256": engine.masks_fingerprint(),
        "tensors": [asdict(row) for row in engine.report()],  # per sparse tensor, in model order
    }
