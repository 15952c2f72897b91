"""Sparse training kernels chosen per layer by measurement: dense where dense wins.

    choices = use_sparse_training_kernels(model, lambda: loss(model), masks, cache_dir="data/cache/kernels")
    ...train...                            # weight.grad is dense and exactly zero where the mask is 0
    refresh_patterns(model, masks)         # after every mask update (drop/grow)

For each masked Linear / Conv1d / Conv2d, on the input it sees in one example forward: each way of each
product of train_kernels.py is timed (`PARTS`), the fastest kept; then that plan and each sparseprop variant
that agrees with dense on that input (sparseprop_kernels.py, when installed) are timed forward + backward
together against the dense module (its weight gradient masked), interleaved, best of `repeats`. The layer is
swapped for the fastest only where it beats dense by `margin`.

A plan is written `KIND:FWD/DX/DW` (e.g. `unfold:torch/scipy/sampled`, `linear:dense/torch/dense`),
`sparseprop:batch` / `sparseprop:outputs`, or `dense`. Decisions are cached in
`cache_dir`/sparse_training_kernels.json keyed by machine and by layer (kind, geometry, weight shape, the
mask's non-zeros, input shape), as `kernels.py` does for inference; RigL and MagRan keep each layer's count of
non-zeros, so one measurement serves a whole run.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import sparseprop_kernels
from sparsedm.sparse.kernels import (
    DecisionCache,
    _conv_geometry,
    _replace,
    applicable_kernels,
    best_of,
    inputs_of,
)
from sparsedm.sparse.train_kernels import (
    ALL_DENSE,
    PARTS,
    SparseTrainLinear,
    _SparseTrainLayer,
    sparse_train_module,
)

CACHE_FILE = "sparse_training_kernels.json"


def refresh_patterns(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """After a mask update: give every sparse training layer its weight's new mask. Returns how many."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, (_SparseTrainLayer, sparseprop_kernels.SparsepropLayer)):
            module.refresh(masks[f"{name}.weight" if name else "weight"])
            count += 1
    return count


@dataclass
class TrainLayerChoice:
    name: str  # module name in the model
    kind: str  # Linear | Conv1d | Conv2d
    weight_shape: List[int]
    input_shape: List[int]
    density: float  # fraction of the mask's ones
    plan: str  # "dense" or KIND:FWD/DX/DW
    speedup: Optional[float]  # dense fwd+bwd time / the plan's; None when forced (not timed)


def plan_name(module: nn.Module, plan) -> str:
    """ "dense", KIND:FWD/DX/DW for a parts plan (a tuple), or a name as given (e.g. "sparseprop:batch")."""
    if isinstance(plan, str):
        return plan
    if tuple(plan) == ALL_DENSE and isinstance(module, nn.Linear):
        return "dense"  # the module itself; for a conv, dense GEMMs on im2col columns are another algorithm
    return f"{'linear' if isinstance(module, nn.Linear) else 'unfold'}:{'/'.join(plan)}"


def parse_plan(name: str) -> Tuple[str, str, str]:
    plan = tuple(name.split(":", 1)[1].split("/"))
    if len(plan) != 3 or any(p not in PARTS[k] for p, k in zip(plan, PARTS)):
        raise UserError(f"unknown sparse training plan {name!r}: write KIND:FWD/DX/DW with {PARTS}")
    return plan


def make_layer(module: nn.Module, mask: torch.Tensor, name: str) -> nn.Module:
    """The layer that computes `module` by the plan `name` (the module itself for "dense")."""
    if name == "dense":
        return module
    if name.startswith("sparseprop:"):
        variant = name.split(":", 1)[1]
        if variant not in sparseprop_kernels.variants(module):
            raise UserError(f"{name} does not fit {module} (or sparseprop is not installed)")
        return sparseprop_kernels.SparsepropLayer(module, mask, variant)
    return sparse_train_module(module, mask, parse_plan(name))


def training_layer_key(module: nn.Module, mask: torch.Tensor, x: torch.Tensor) -> str:
    w = module.weight
    geometry = "" if isinstance(module, nn.Linear) else f" {_conv_geometry(module)}"
    return (
        f"train {type(module).__name__}{geometry} {list(w.shape)} nnz {int(mask.sum())} {w.dtype} {w.device.type}"
        f" x {list(x.shape)}"
    )


def fwd_bwd_call(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, mask: Optional[torch.Tensor]):
    """One forward and backward; for the dense module also the masking of its weight gradient."""

    def run():
        for p in module.parameters():
            p.grad = None
        x.grad = None
        module(x).backward(dy)
        if mask is not None:
            module.weight.grad.mul_(mask)

    return run


def _part_times(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor, repeats: int, sync) -> Dict[str, List[float]]:
    """Each way of computing each product, timed on the layer's real M and dY."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    with torch.no_grad():
        if isinstance(layer, SparseTrainLinear):
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
        for part, ways in PARTS.items():  # scipy computes on the CPU only: never chosen elsewhere
            usable = [h for h in ways if h != "scipy" or x.device.type == "cpu"]
            measured = dict(zip(usable, best_of([lambda h=h: product[part](h) for h in usable], repeats, sync)))
            times[part] = [measured.get(h, float("inf")) for h in ways]
        return times


def choose_training_plans(
    model: nn.Module,
    inputs: Dict[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    cache_dir=None,
    force: Optional[str] = None,
    margin: float = 1.05,
    repeats: int = 5,
) -> List[TrainLayerChoice]:
    """Swap each layer of `inputs` ({module name: its input}) for the sparse training layer of its fastest
    plan if that beats the dense module's forward + backward by `margin`. `force`: a plan for every layer,
    untimed: FWD/DX/DW (e.g. "torch/torch/sampled") or "sparseprop:batch" / "sparseprop:outputs"."""
    cache = DecisionCache(cache_dir, CACHE_FILE)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    choices = []
    for name, x in inputs.items():
        module = model.get_submodule(name)
        mask = masks[f"{name}.weight" if name else "weight"].to(torch.bool)
        key = training_layer_key(module, mask, x)
        if force is not None:
            plan = force if force.startswith("sparseprop:") else plan_name(module, parse_plan(f"k:{force}"))
            speedup = None
        elif cache.get(key) is not None:
            plan, speedup = cache.get(key)
        else:
            plan, speedup, _ = measure_plan(module, mask, x, repeats, sync, margin)
            cache.put(key, plan, speedup)
        choices.append(
            TrainLayerChoice(
                name,
                type(module).__name__,
                list(module.weight.shape),
                list(x.shape),
                float(mask.float().mean()),
                plan,
                speedup,
            )
        )
        if plan != "dense":
            _replace(model, name, make_layer(module, mask, plan))
    cache.save()
    return choices


def measure_plan(module, mask, x, repeats, sync, margin=1.05, sparseprop=True):
    """(plan name, speed-up, part times): each product's fastest way ({part: seconds of each way in PARTS}),
    then that parts plan and (with `sparseprop`) each sparseprop variant that agrees with dense on x, forward +
    backward against the dense module's, interleaved; the fastest if it beats dense by `margin`, else "dense"."""
    with torch.no_grad():
        dy = torch.randn(module(x).shape, dtype=x.dtype, device=x.device)
    x = x.detach().requires_grad_(True)
    layer = sparse_train_module(module, mask, ALL_DENSE)
    times = _part_times(layer, x, dy, repeats, sync)
    plan = tuple(PARTS[part][min(range(len(t)), key=t.__getitem__)] for part, t in times.items())
    candidates = {}
    if plan != ALL_DENSE or not isinstance(module, nn.Linear):
        layer.plan = plan
        candidates[plan_name(module, plan)] = layer
    for variant in sparseprop_kernels.variants(module, x.shape[0]) if sparseprop else ():
        sparse = sparseprop_kernels.SparsepropLayer(module, mask, variant)
        if sparseprop_kernels.agrees(sparse, module, mask, x, dy):
            candidates[f"sparseprop:{variant}"] = sparse
    if not candidates:
        return "dense", 1.0, times
    calls = [fwd_bwd_call(module, x, dy, mask)] + [fwd_bwd_call(c, x, dy, None) for c in candidates.values()]
    dense, *sparse = best_of(calls, repeats, sync)
    for p in module.parameters():
        p.grad = None
    fastest = min(range(len(sparse)), key=sparse.__getitem__)
    speedup = dense / sparse[fastest]
    return (list(candidates)[fastest] if speedup >= margin else "dense"), speedup, times


def candidate_training_layers(model: nn.Module, names: Iterable[str]) -> Dict[str, nn.Module]:
    """{module name: module} of the Linear/Conv1d/Conv2d layers whose weight is in `names` and that a sparse
    training layer computes exactly."""
    wanted = set(names)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
        and applicable_kernels(module)
        and (f"{name}.weight" if name else "weight") in wanted
    }


def use_sparse_training_kernels(
    model: nn.Module, run_example: Callable[[], object], masks: Mapping[str, torch.Tensor], **options
) -> List[TrainLayerChoice]:
    """Run `run_example` (one forward of `model` on a training batch), then swap the masked layers by
    measurement (options: cache_dir, force, margin, repeats of `choose_training_plans`)."""
    inputs = inputs_of(model, candidate_training_layers(model, masks.keys()), run_example)
    return choose_training_plans(model, inputs, masks, **options)
