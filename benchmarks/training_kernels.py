"""Sparse training kernels on masked layers, for benchmarks/sparse_training.py: each product of a masked Linear /
Conv with its active weights only, the layer still holding its dense weight (no command trains this way:
`sparse.kernels` makes layers compact, sparsedm/sparse/kernels/compact_layers.py).

    choices = use_sparse_training_kernels(model, lambda: loss(model), masks, cache_dir="data/cache/kernels")
    ...train...                            # weight.grad is dense and exactly zero where the mask is 0
    refresh_patterns(model, masks)         # after every mask update (drop/grow)

For each masked Linear / Conv1d / Conv2d, on the input it sees in one example forward: each way of each
product is timed (sparsedm's `compact_choice.part_times`), the fastest kept; then that plan and each sparseprop
variant that agrees with the masked module on that input (sparseprop_kernels.py, when installed) are timed
forward + backward together against the masked module, interleaved, best of `repeats`. The layer is swapped
for the fastest only where it beats the masked module by `margin`. A plan is written `KIND:FWD/DX/DW` (e.g.
`unfold:torch/scipy/sampled`), `sparseprop:batch` / `sparseprop:outputs`, or `module` (the module kept).
Decisions are cached in `cache_dir`/training_kernels.json through sparsedm's measure-choose-cache mechanism.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import sparseprop_kernels
import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.kernel_plan import MATMUL_ONLY, LayerPlan
from sparsedm.sparse.kernels.compact_choice import (
    fastest_ways,
    layer_key,
    part_times,
    race_against_masked,
)
from sparsedm.sparse.kernels.layers import ConvProduct, LinearProduct, fits
from sparsedm.sparse.kernels.measure import (
    DecisionCache,
    choose_per_layer,
    device_sync,
    inputs_of,
    replace_module,
)
from sparsedm.sparse.kernels.products import MaskPattern

CACHE_FILE = "training_kernels.json"
MODULE = "module"  # the plan that keeps the masked module as it is


class MaskedProduct(torch.autograd.Function):
    """Y = W M with W's gradient computed only at the mask's non-zeros (returned dense, zeros elsewhere)."""

    @staticmethod
    def forward(ctx, weight, m, pattern: MaskPattern, ways):
        ctx.pattern, ctx.ways = pattern, ways
        ctx.save_for_backward(weight, m)
        return pattern.forward(weight.detach(), m.detach(), ways[0])

    @staticmethod
    def backward(ctx, dy):
        weight, m = ctx.saved_tensors
        pattern, ways = ctx.pattern, ctx.ways
        dm = pattern.input_grad(weight, dy, ways[1]) if ctx.needs_input_grad[1] else None
        dw = pattern.scatter(pattern.weight_grad_values(dy, m, ways[2])) if ctx.needs_input_grad[0] else None
        return dw, dm, None, None


class MaskedLayer:
    """Holds the original layer's Parameters under the same names (`weight`, `bias`), so state dicts, masks and
    optimisers keyed by name or by Parameter see no change; `dense_module` keeps the original module."""

    def _hold(self, module: nn.Module, mask: torch.Tensor, ways) -> None:
        self.weight, self.bias = module.weight, module.bias
        self.weight_shape = tuple(module.weight.shape)
        self.dense_module = [module]  # a list: not a submodule, its Parameters are not listed twice
        self.ways = tuple(ways)
        self.refresh(mask)

    def refresh(self, mask: torch.Tensor) -> None:
        """A new pattern after a mask update (the mask has the weight's shape)."""
        self.pattern = MaskPattern(mask.reshape(self.weight.shape[0], -1))

    def product(self, m: torch.Tensor) -> torch.Tensor:
        return MaskedProduct.apply(self.weight.reshape(self.weight.shape[0], -1), m, self.pattern, self.ways)


class MaskedSparseLinear(MaskedLayer, LinearProduct):
    def __init__(self, module: nn.Linear, mask: torch.Tensor, ways):
        nn.Module.__init__(self)
        self._hold(module, mask, ways)


class MaskedSparseConv(MaskedLayer, ConvProduct):
    def __init__(self, conv: nn.Module, mask: torch.Tensor, ways):
        nn.Module.__init__(self)
        self._hold(conv, mask, ways)
        self.set_geometry(conv)


def sparse_train_module(module: nn.Module, mask: torch.Tensor, ways) -> nn.Module:
    if isinstance(module, nn.Linear):
        return MaskedSparseLinear(module, mask, ways)
    return MaskedSparseConv(module, mask, ways)


def refresh_patterns(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """After a mask update: give every sparse training layer its weight's new mask. Returns how many."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, (MaskedLayer, sparseprop_kernels.SparsepropLayer)):
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
    plan: str  # "module" or KIND:FWD/DX/DW or sparseprop:VARIANT
    speedup: Optional[float]  # masked fwd+bwd time / the plan's; None when forced (not timed)


def plan_name(module: nn.Module, ways) -> str:
    """ "module" for the Linear's own product, else KIND:FWD/DX/DW."""
    if tuple(ways) == MATMUL_ONLY and isinstance(module, nn.Linear):
        return MODULE  # for a conv, dense GEMMs on im2col columns are another algorithm
    return f"{'linear' if isinstance(module, nn.Linear) else 'unfold'}:{'/'.join(ways)}"


def parse_plan(name: str):
    """(FWD, DX, DW) of KIND:FWD/DX/DW."""
    return LayerPlan.from_name(name.split(":", 1)[1]).ways


def make_layer(module: nn.Module, mask: torch.Tensor, name: str) -> nn.Module:
    """The layer that computes `module` by the plan `name` (the module itself for "module")."""
    if name == MODULE:
        return module
    if name.startswith("sparseprop:"):
        variant = name.split(":", 1)[1]
        if variant not in sparseprop_kernels.variants(module):
            raise UserError(f"{name} does not fit {module} (or sparseprop is not installed)")
        return sparseprop_kernels.SparsepropLayer(module, mask, variant)
    return sparse_train_module(module, mask, parse_plan(name))


def measure_plan(module, mask, x, repeats, sync, margin=1.05, sparseprop=True):
    """(plan name, speed-up, part times): each product's fastest way ({part: seconds of each of its ways}),
    then that plan and (with `sparseprop`) each sparseprop variant that agrees with the masked module on x,
    forward + backward against the masked module's, interleaved; the fastest if it beats the masked module by
    `margin`, else "module"."""
    with torch.no_grad():
        dy = torch.randn(module(x).shape, dtype=x.dtype, device=x.device)
    x = x.detach().requires_grad_(True)
    layer = sparse_train_module(module, mask, MATMUL_ONLY)
    times = part_times(layer, x, dy, repeats, sync)
    ways = fastest_ways(times)
    candidates = {}
    if ways != MATMUL_ONLY or not isinstance(module, nn.Linear):
        layer.ways = ways
        candidates[plan_name(module, ways)] = layer
    for variant in sparseprop_kernels.variants(module, x.shape[0]) if sparseprop else ():
        sparse = sparseprop_kernels.SparsepropLayer(module, mask, variant)
        if sparseprop_kernels.agrees(sparse, module, mask, x, dy):
            candidates[f"sparseprop:{variant}"] = sparse
    if not candidates:
        return MODULE, 1.0, times
    fastest, speedup = race_against_masked(module, mask, x, dy, candidates, repeats, sync)
    return (fastest if speedup >= margin else MODULE), speedup, times


def candidate_training_layers(model: nn.Module, names: Iterable[str]) -> Dict[str, nn.Module]:
    """{module name: module} of the Linear/Conv1d/Conv2d layers whose weight is in `names` that a sparse
    product computes exactly."""
    wanted = set(names)
    return {
        name: module
        for name, module in model.named_modules()
        if fits(module) and (f"{name}.weight" if name else "weight") in wanted
    }


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
    plan if that beats the masked module's forward + backward by `margin`. `force`: a plan for every layer,
    untimed: FWD/DX/DW (e.g. "torch/torch/sampled") or "sparseprop:batch" / "sparseprop:outputs"."""
    layers = {name: model.get_submodule(name) for name in inputs}
    mask_of = {name: masks[f"{name}.weight" if name else "weight"].to(torch.bool) for name in layers}
    by_module = {module: mask_of[name] for name, module in layers.items()}
    if force is not None:
        decisions = {
            name: (force if force.startswith("sparseprop:") else plan_name(module, parse_plan(f"k:{force}")), None)
            for name, module in layers.items()
        }
    else:
        sync = device_sync()
        decisions = choose_per_layer(
            layers,
            inputs,
            lambda module, x: layer_key(module, by_module[module], x),
            lambda module, x: measure_plan(module, by_module[module], x, repeats, sync, margin)[:2],
            DecisionCache(cache_dir, CACHE_FILE),
        )
    choices = []
    for name, (plan, speedup) in decisions.items():
        module, x, mask = layers[name], inputs[name], mask_of[name]
        shape = list(module.weight.shape)
        choices.append(
            TrainLayerChoice(
                name, type(module).__name__, shape, list(x.shape), float(mask.float().mean()), plan, speedup
            )
        )
        if plan != MODULE:
            replace_module(model, name, make_layer(module, mask, plan))
    return choices


def use_sparse_training_kernels(
    model: nn.Module, run_example: Callable[[], object], masks: Mapping[str, torch.Tensor], **options
) -> List[TrainLayerChoice]:
    """Run `run_example` (one forward of `model` on a training batch), then swap the masked layers by
    measurement (options: cache_dir, force, margin, repeats of `choose_training_plans`)."""
    inputs = inputs_of(model, candidate_training_layers(model, masks.keys()), run_example)
    return choose_training_plans(model, inputs, masks, **options)
