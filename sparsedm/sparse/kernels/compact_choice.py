"""Which plan each compact layer takes (kernel_plan.py's LayerPlan): forced, or measured on a training batch.

    plans = choose_compact_plans(model, lambda: loss(model, batch), masks, cache_dir=..., forced=None)

Measured (`sparse.kernels=measure`), through measure.py's mechanism: each way of each product is timed on the
layer's real M and dY (`part_times`), the fastest way of each kept; then the compact layer on that plan, the
compact layer on its module's own operation (its weight scattered for each call: with large weights that
costs fresh pages) and the masked module, forward + backward, interleaved. The `block` way races only where the
masks are made of tiles (sparse.block_size > 1). The faster compact plan wins
unless the masked module beats it by `margin`: then the layer stays masked (no plan). Decisions are cached
in `cache_dir`/compact_plans.json by machine and layer (kind, geometry, weight shape, the mask's non-zeros,
input shape); RigL and MagRan keep each layer's count of non-zeros, so one measurement serves a whole run.
Under torch.distributed rank 0 measures and every rank takes its plans.
"""

import copy
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from sparsedm.sparse.kernel_plan import MATMUL_ONLY, MODULE_OP, WAYS, LayerPlan
from sparsedm.sparse.kernels.compact_layers import compact_layer
from sparsedm.sparse.kernels.layers import LinearProduct, conv_geometry, fits
from sparsedm.sparse.kernels.measure import DecisionCache, best_of, choose_per_layer, device_sync, inputs_of

CACHE_FILE = "compact_plans.json"


def compactable(model: nn.Module, names) -> Dict[str, nn.Module]:
    """{weight name: module} of the Linear/Conv1d/Conv2d layers whose weight is in `names` and that a compact
    layer computes exactly."""
    wanted = set(names)
    return {
        f"{name}.weight" if name else "weight": module
        for name, module in model.named_modules()
        if fits(module) and (f"{name}.weight" if name else "weight") in wanted
    }


def layer_key(module: nn.Module, mask: torch.Tensor, x: torch.Tensor, block_size: int = 1) -> str:
    w = module.weight
    geometry = "" if isinstance(module, nn.Linear) else f" {conv_geometry(module)}"
    blocks = f" blocks {block_size}" if block_size > 1 else ""  # tiles race the block way: another decision
    return (
        f"{type(module).__name__}{geometry} {list(w.shape)} nnz {int(mask.sum())}{blocks} {w.dtype} {w.device.type}"
        f" x {list(x.shape)}"
    )


def fwd_bwd_call(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, mask: Optional[torch.Tensor]):
    """One forward and backward; for a masked module (`mask` given) also the masking of its weight gradient."""

    def run():
        for p in module.parameters():
            p.grad = None
        x.grad = None
        module(x).backward(dy)
        if mask is not None:
            module.weight.grad.mul_(mask)

    return run


def part_times(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor, repeats: int, sync) -> Dict[str, List[float]]:
    """{product: seconds of each of its WAYS} for a layer with a `pattern` and a dense `weight`, timed on the
    layer's real M and dY."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    with torch.no_grad():
        if isinstance(layer, LinearProduct):
            m, dy2 = x.reshape(-1, weight.shape[1]).t(), dy.reshape(-1, weight.shape[0]).t()
        else:
            m = layer.columns(x)
            dy2 = dy.transpose(0, 1).reshape(dy.shape[1], -1)
        p = layer.pattern
        product = {
            "fwd": lambda h: p.forward(weight, m, h),
            "dx": lambda h: p.input_grad(weight, dy2, h),
            "dw": lambda h: p.weight_grad_values(dy2, m, h),
        }
        times = {}
        for part, ways in WAYS.items():  # scipy computes on the CPU only, block on tiles only: never chosen elsewhere
            usable = [
                h for h in ways if (h != "scipy" or x.device.type == "cpu") and (h != "block" or p.block_size > 1)
            ]
            measured = dict(zip(usable, best_of([lambda h=h: product[part](h) for h in usable], repeats, sync)))
            times[part] = [measured.get(h, float("inf")) for h in ways]
        return times


def fastest_ways(times: Dict[str, List[float]]) -> tuple:
    return tuple(WAYS[part][min(range(len(t)), key=t.__getitem__)] for part, t in times.items())


def measure_compact_plan(
    module: nn.Module, mask: torch.Tensor, x: torch.Tensor, repeats: int, sync, margin: float, block_size: int = 1
):
    """(plan name or None to stay masked, speed-up of the faster compact plan over the masked module)."""
    with torch.no_grad():
        dy = torch.randn(module(x).shape, dtype=x.dtype, device=x.device)
    x = x.detach().requires_grad_(True)

    def layer(plan):
        return compact_layer(copy.deepcopy(module), mask, plan, block_size)

    ways = fastest_ways(part_times(layer(MODULE_OP), x, dy, repeats, sync))
    candidates = {MODULE_OP: layer(MODULE_OP)}
    if ways != MATMUL_ONLY or not isinstance(module, nn.Linear):
        candidates[LayerPlan(ways)] = layer(LayerPlan(ways))
    fastest, speedup = race_against_masked(module, mask, x, dy, candidates, repeats, sync)
    if speedup * margin < 1:
        return None, speedup
    return fastest.name, speedup


def race_against_masked(module: nn.Module, mask, x, dy, candidates: Dict, repeats: int, sync) -> tuple:
    """(key of the fastest candidate, its speed-up over the masked module): forward + backward of each, interleaved
    with the masked module's, best of `repeats`; the module's gradients left unset."""
    calls = [fwd_bwd_call(module, x, dy, mask)] + [fwd_bwd_call(c, x, dy, None) for c in candidates.values()]
    masked, *times = best_of(calls, repeats, sync)
    for p in module.parameters():
        p.grad = None
    fastest = min(range(len(times)), key=times.__getitem__)
    return list(candidates)[fastest], masked / times[fastest]


def choose_compact_plans(
    model: nn.Module,
    run_example: Callable[[], object],
    masks: Mapping[str, torch.Tensor],
    cache_dir=None,
    forced: Optional[LayerPlan] = None,
    margin: float = 1.05,
    repeats: int = 5,
    block_size: int = 1,
) -> Dict[str, LayerPlan]:
    """{weight name: plan} of the masked layers to make compact: `forced` for every compactable layer, or by
    measurement on the input each layer sees in `run_example`; a layer where the masked module wins is left
    out (it stays masked). `block_size`: the tiles of the masks (sparse.block_size), for the block way."""
    layers = compactable(model, masks.keys())
    if forced is not None:
        return {name: forced for name in layers}
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    plans: Dict[str, LayerPlan] = {}
    if not distributed or dist.get_rank() == 0:
        by_module = {name.rpartition(".")[0]: module for name, module in layers.items()}
        inputs = inputs_of(model, by_module, run_example)
        sync = device_sync()
        mask_of = {module: masks[name].to(torch.bool) for name, module in layers.items()}
        decisions = choose_per_layer(
            by_module,
            inputs,
            lambda module, x: layer_key(module, mask_of[module], x, block_size),
            lambda module, x: measure_compact_plan(module, mask_of[module], x, repeats, sync, margin, block_size),
            DecisionCache(cache_dir, CACHE_FILE),
        )
        plans = {f"{name}.weight": LayerPlan.from_name(plan) for name, (plan, _) in decisions.items() if plan}
    if distributed:
        box = [plans]
        dist.broadcast_object_list(box, src=0)
        plans = box[0]
    return plans
