"""Small-Dense: a dense denoiser made narrower until its parameter count matches a sparse model's non-zero count.

The baseline of every sparse-training paper since RigL (Evci et al. 2020): at sparsity S, a dense model of the
same parameter count as the sparse one. The target is the non-zero count the engine keeps at S on the full-width
model, with the config's distribution (ERK, uniform, custom) and its dense biases, norms and excluded layers. A
model family offers its allowed widths (the UNet's base channels that its group norms and attention heads
divide, ChiroDiff's GRU hidden size) through the task (`Task.widths`, `Task.build_denoiser`); the parameter count
grows with the width, so a bisection finds the two widths either side of the target, and the closer one is
kept. The achieved count and its ratio to the target are recorded (eval.json `small_dense`) and shown.
"""

from dataclasses import asdict, dataclass, replace
from typing import Callable, List

import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine, count_parameters
from sparsedm.sparse.methods import static_method


@dataclass(frozen=True)
class MatchedWidth:
    sparsity: float  # the S whose non-zero count was matched
    width: int  # the width built (model.base_channels, model.hidden_size)
    full_width: int  # the config's width, that of the sparse runs it is compared with
    full_params: int  # parameters of the full-width (Dense) model
    params: int  # parameters of the narrowed model (all non-zero: it is dense)
    target: int  # non-zero parameters of the full-width model at S

    @property
    def ratio(self) -> float:
        """params / target: 1 is an exact match; widths come in steps, so it is rarely exact."""
        return self.params / self.target

    def record(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def nonzero_at(model: nn.Module, sparse: SparseConfig, sparsity: float) -> int:
    """Non-zero parameters of `model` at S under `sparse`'s distribution and selection: the engine's own masks
    (a static method: its counts are those of every constant-S method at step 0). The model's weights are
    masked in place: pass a throwaway copy."""
    config = replace(sparse, method=static_method().name, sparsity=sparsity)
    engine = SparseEngine(model, torch.optim.AdamW(model.parameters(), fused=True), config, total_steps=1)
    return count_parameters(model, engine.masks)["params_nonzero"]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def match_width(
    build: Callable[[int], nn.Module], widths: List[int], sparse: SparseConfig, sparsity: float
) -> MatchedWidth:
    """The width of `widths` (ascending, the last the full one) whose dense model's parameter count is nearest the
    full model's non-zero count at `sparsity` (the narrower one on a tie). The models built on the way do not
    touch the global RNG, so the model built afterwards is initialised as it would be without the search."""
    with torch.random.fork_rng():
        full = build(widths[-1])
        full_params = parameter_count(full)
        target = nonzero_at(full, sparse, sparsity)
        counts = {}

        def count(index: int) -> int:
            if index not in counts:
                counts[index] = parameter_count(build(widths[index]))
            return counts[index]

        low, high = 0, len(widths) - 1  # invariant: the first width with count >= target lies in [low, high]
        while low < high:
            middle = (low + high) // 2
            if count(middle) >= target:
                high = middle
            else:
                low = middle + 1
        candidates = [i for i in (low - 1, low) if i >= 0]
        best = min(candidates, key=lambda i: (abs(count(i) - target), i))
    if widths[best] == widths[-1]:
        raise UserError(
            f"small_dense={sparsity}: no narrower model comes closer to the {target} non-zero parameters of S = "
            f"{sparsity} than the full one; use a larger S or a wider model"
        )
    return MatchedWidth(sparsity, widths[best], widths[-1], full_params, count(best), target)
