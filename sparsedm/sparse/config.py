"""The sparse engine's configuration: the paper's knobs S, p, ΔT and the layer-wise distribution.

Every inferred choice of the method (see docs/method.md) is a field here with the stated default.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Dict, List, Optional

from sparsedm.errors import UserError, choice
from sparsedm.sparse.kernel_plan import KernelPlan
from sparsedm.sparse.methods import DEFAULT_METHOD, Method, get_method


class Distribution(StrEnum):
    erk = "erk"  # Erdős–Rényi-Kernel: denser small tensors, sparser large ones
    uniform = "uniform"  # S in every tensor
    custom = "custom"  # sparse.custom_densities


class PruneRateDecay(StrEnum):
    cosine = "cosine"  # p_t = p (1 + cos(pi t / t_end)) / 2
    constant = "constant"  # p_t = p


@dataclass
class SparseConfig:
    # a name or alias of sparse/methods.py's METHODS (`sparsedm train --help` lists them); default RigL-DM
    method: str = DEFAULT_METHOD
    sparsity: float = 0.5  # S: fraction of zero weights over the sparse tensors, in [0, 1)
    initial_sparsity: float = 0.5  # S_i: where a gradual method (GraNet) starts, capped at S; others ignore it
    distribution: Distribution = Distribution.erk  # erk | uniform | custom: how S is spread over tensors
    # distribution=custom: regex -> density; unmatched tensors get 1 - S
    custom_densities: Dict[str, float] = field(default_factory=dict)
    prune_rate: float = 0.1  # p: fraction of a tensor's active weights replaced at one update, in (0, 1]
    prune_rate_decay: PruneRateDecay = PruneRateDecay.cosine  # cosine (p_t = p (1 + cos(pi t / t_end)) / 2) | constant
    update_interval: int = 100  # ΔT: optimiser steps between mask updates
    t_end: float = 0.75  # last update step: <= 1 is a fraction of training, > 1 an absolute step
    regrow_dropped: bool = False  # grow among positions inactive after the drop (google-research/rigl), not before
    grad_accumulation: int = 1  # RigL: batches whose dense gradients are summed for the grow criterion
    include: List[str] = field(default_factory=list)  # regexes of names to sparsify; empty = every weight >= 2 dims
    exclude: List[str] = field(default_factory=list)  # regexes on parameter names to keep dense
    exclude_time_embedding: bool = True  # keep timestep-embedding layers dense (the paper's rule)
    seed: int = 0  # seeds the initial masks and random growth; identical on every rank
    # b: masks are unions of b x b tiles of each tensor's 2-D view (blocks.py; not the paper's), so compact Linear
    # layers compute on dense blocks (sparse.kernels' `block` way); 1 = unstructured, the paper's; e.g. 32
    block_size: int = 1
    # how sparse layers train (kernel_plan.py): masked (dense tensors with masks) | measure (only active weights
    # kept; each Linear/Conv on the faster of sparse products and its module's op, measured) | compact (only
    # active weights kept, module ops) | FWD/DX/DW (compact, one plan forced on every layer, e.g. torch/torch/sampled)
    kernels: str = "masked"

    def __post_init__(self):
        self.validate()

    @property
    def method_record(self) -> Method:
        return get_method(self.method)

    @property
    def canonical_method(self) -> str:
        return self.method_record.name

    @property
    def is_dynamic(self) -> bool:
        return self.method_record.dynamic

    def validate(self) -> "SparseConfig":
        """Raise a one-line UserError for any value outside its range; return self."""
        get_method(self.method)
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"sparse.sparsity={self.sparsity} is out of range; S must be in [0, 1)")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise UserError(f"sparse.initial_sparsity={self.initial_sparsity} is out of range; S_i must be in [0, 1)")
        self.distribution = choice(Distribution, self.distribution, "sparse.distribution")
        if not 0.0 < self.prune_rate <= 1.0:
            raise UserError(f"sparse.prune_rate={self.prune_rate} is out of range; p must be in (0, 1]")
        self.prune_rate_decay = choice(PruneRateDecay, self.prune_rate_decay, "sparse.prune_rate_decay")
        if self.update_interval < 1:
            raise UserError(f"sparse.update_interval={self.update_interval} is out of range; ΔT must be >= 1")
        if self.t_end <= 0:
            raise UserError(f"sparse.t_end={self.t_end} must be > 0 (a fraction <= 1 of training, or a step > 1)")
        if self.grad_accumulation < 1:
            raise UserError(f"sparse.grad_accumulation={self.grad_accumulation} must be >= 1")
        if self.grad_accumulation > self.update_interval:
            raise UserError(
                f"sparse.grad_accumulation={self.grad_accumulation} exceeds sparse.update_interval={self.update_interval}; "
                "accumulate over at most ΔT batches"
            )
        if self.block_size < 1:
            raise UserError(f"sparse.block_size={self.block_size} is out of range; b must be >= 1 (1: unstructured)")
        self._kernel_plan = KernelPlan.parse(self.kernels)
        self._kernel_plan.check_blocks(self.block_size)
        for pattern, density in self.custom_densities.items():
            if not 0.0 < density <= 1.0:
                raise UserError(f"sparse.custom_densities[{pattern!r}]={density} must be in (0, 1]")
        return self

    @property
    def kernel_plan(self) -> KernelPlan:
        """`kernels` as parsed by validate() (kernel_plan.py)."""
        return self._kernel_plan

    def end_step(self, total_steps: Optional[int]) -> int:
        """t_end as a step: a fraction of `total_steps`, or the absolute step it names."""
        if self.t_end > 1:
            return int(self.t_end)
        if total_steps is None:
            raise UserError(
                "sparse.t_end is a fraction of training, so the engine needs total_steps; pass it or give t_end as a step > 1"
            )
        return int(self.t_end * total_steps)
