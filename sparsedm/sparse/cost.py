"""Cost accounting: parameters and FLOPs of a sparse model (method.md, "Cost accounting").

Masks simulate sparsity: with dense kernels, unstructured sparsity gives no wall-clock speed-up, so the
savings reported here are in non-zero parameters and FLOPs, not seconds.

Forward FLOPs are measured with `torch.utils.flop_counter` per module (attention counted through the math
SDPA backend, since the CPU flash kernel reports 0). A module's FLOPs are split over its own weights of
>= 2 dims in proportion to their size (exact for matmul/conv ops, e.g. the six weights of a GRU layer
pair), and each sparse weight's share is scaled by its density.

The counter runs on a CPU copy of the model and inputs, so the figure is the same on every device: on CUDA,
`nn.GRU` runs cuDNN's fused `aten._cudnn_rnn`, which the counter has no formula for and would count as 0.
A model on the meta device (shapes only) is copied with zero weights: FLOPs depend on shapes alone.
"""

import copy
import math
from typing import Any, Dict, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sparsedm.sparse.methods import get_method


def count_parameters(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """total, non-zero (active entries of the sparse tensors + every dense parameter) and trainable."""
    total = nonzero = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        active = int(masks[name].sum()) if name in masks else param.numel()
        nonzero += active
        if param.requires_grad:
            trainable += active
    return {"params_total": total, "params_nonzero": nonzero, "params_trainable": trainable}


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_meta:
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.detach().cpu()


def cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` on the CPU, made without a second copy on the model's own device."""
    memo = {id(p): nn.Parameter(_to_cpu(p), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): _to_cpu(b) for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _inputs_to_cpu(value):
    if torch.is_tensor(value):
        return _to_cpu(value)
    if isinstance(value, Mapping):
        return {k: _inputs_to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_inputs_to_cpu(v) for v in value)
    return value


def _module_flops(model: nn.Module, inputs: Union[Sequence[Any], Mapping[str, Any]]) -> Dict[str, int]:
    model, inputs = cpu_copy(model), _inputs_to_cpu(inputs)
    args, kwargs = (inputs, {}) if not isinstance(inputs, Mapping) else ((), inputs)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*args, **kwargs)
    root = type(model).__name__
    flops = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root:
            flops[""] = sum(ops.values())
        elif key.startswith(root + "."):
            flops[key[len(root) + 1 :]] = sum(ops.values())
    return flops


def forward_flops(
    model: nn.Module,
    inputs: Union[Sequence[Any], Mapping[str, Any]],
    densities: Mapping[str, float],
) -> Dict[str, int]:
    """Dense and sparse FLOPs of one forward pass on `inputs` (positional tuple or keyword dict)."""
    flops = _module_flops(model, inputs)
    dense = flops.get("", 0)
    saved = 0.0
    for module_name, module in model.named_modules():
        own = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() >= 2}
        if not own or module_name not in flops:
            continue
        prefix = f"{module_name}." if module_name else ""
        # the counter's figures include sub-modules; keep only the work done by this module's own ops
        exclusive = flops[module_name] - sum(flops.get(prefix + child, 0) for child, _ in module.named_children())
        size = sum(p.numel() for p in own.values())
        for param_name, param in own.items():
            full = prefix + param_name
            if full in densities:
                share = exclusive * param.numel() / size
                saved += share * (1.0 - densities[full])
    return {"flops_forward_dense": int(dense), "flops_forward_sparse": int(round(dense - saved))}


def train_flops_per_step(method: str, f_sparse: float, f_dense: float, update_interval: int) -> float:
    """Training FLOPs per step, backward ≈ 2 × forward (RigL, Evci et al. 2020, appendix H): the method's
    formula in sparse/methods.py (Dense 3 f_D; Static and MagRan 3 f_S; RigL (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1))."""
    return get_method(method).train_flops(f_sparse, f_dense, update_interval)


def sampling_flops(f_sparse: float, steps: int) -> float:
    """FLOPs of one sampling run: the denoiser's sparse forward FLOPs times the denoising steps."""
    return f_sparse * steps


def masked_densities(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Actual densities of the current masks (for FLOPs of a trained model)."""
    return {n: float(m.sum()) / math.prod(m.shape) for n, m in masks.items()}
