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
from typing import Any, Dict, Mapping, Sequence, Tuple, Union

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


def flop_shares(model: nn.Module, inputs: Union[Sequence[Any], Mapping[str, Any]]) -> Tuple[int, Dict[str, float]]:
    """Dense forward FLOPs on `inputs` and each weight's share of them (a weight at density d costs d × share)."""
    flops = _module_flops(model, inputs)
    shares = {}
    for module_name, module in model.named_modules():
        own = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() >= 2}
        if not own or module_name not in flops:
            continue
        prefix = f"{module_name}." if module_name else ""
        # the counter's figures include sub-modules; keep only the work done by this module's own ops
        exclusive = flops[module_name] - sum(flops.get(prefix + child, 0) for child, _ in module.named_children())
        size = sum(p.numel() for p in own.values())
        for param_name, param in own.items():
            shares[prefix + param_name] = exclusive * param.numel() / size
    return flops.get("", 0), shares


def sparse_forward_flops(dense: int, shares: Mapping[str, float], densities: Mapping[str, float]) -> int:
    """Forward FLOPs with the weights named in `densities` at those densities (the others dense)."""
    saved = 0.0
    for name, share in shares.items():
        if name in densities:
            saved += share * (1.0 - densities[name])
    return int(round(dense - saved))


def forward_flops(
    model: nn.Module,
    inputs: Union[Sequence[Any], Mapping[str, Any]],
    densities: Mapping[str, float],
) -> Dict[str, int]:
    """Dense and sparse FLOPs of one forward pass on `inputs` (positional tuple or keyword dict)."""
    dense, shares = flop_shares(model, inputs)
    return {"flops_forward_dense": int(dense), "flops_forward_sparse": sparse_forward_flops(dense, shares, densities)}


def mean_forward_flops(
    dense: int,
    shares: Mapping[str, float],
    counts_history: Sequence[Tuple[int, Mapping[str, int]]],
    numels: Mapping[str, int],
    steps: int,
) -> float:
    """Sparse forward FLOPs averaged over steps 0 .. steps-1, each at the active counts it trained with.

    `counts_history`: (first step, active weights per tensor) in step order (SparseEngine.counts_history). A run
    whose counts never changed has one entry, and the figure is its FLOPs exactly."""
    per_entry = [
        sparse_forward_flops(dense, shares, {n: c / numels[n] for n, c in counts.items()})
        for _, counts in counts_history
    ]
    if len(per_entry) == 1:
        return per_entry[0]
    starts = [step for step, _ in counts_history] + [steps]
    return sum(f * (max(min(end, steps) - start, 0)) for f, start, end in zip(per_entry, starts, starts[1:])) / steps


def train_flops_per_step(method: str, f_sparse: float, f_dense: float, update_interval: int) -> float:
    """Training FLOPs per step, backward ≈ 2 × forward (RigL, Evci et al. 2020, appendix H): the method's
    formula in sparse/methods.py (e.g. Dense 3 f_D, Static 3 f_S, RigL (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)); f_S is
    the sparse forward FLOPs averaged over the run's steps (`mean_forward_flops`) where the counts change."""
    return get_method(method).train_flops(f_sparse, f_dense, update_interval)


def sampling_flops(f_sparse: float, steps: int) -> float:
    """FLOPs of one sampling run: the denoiser's sparse forward FLOPs times the denoising steps."""
    return f_sparse * steps


def masked_densities(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Actual densities of the current masks (for FLOPs of a trained model)."""
    return {n: float(m.sum()) / math.prod(m.shape) for n, m in masks.items()}
