"""The paper's experiment grid: methods x sparsity S x prune rate p x seeds, one run per point, and block size b.

A method without masks (Dense) has neither S nor p, so it runs once per seed; a sparse method whose masks never
change (Static-DM) has no p and runs once per S and seed, and so does Small-Dense (baselines.py: a Dense run
narrowed to the non-zero count of S). Only the dynamic methods span the whole S x p grid (sparse/methods.py says
which is which). Every sparse method also spans the block sizes (`sparse.block_size`, sparse/blocks.py; not the
paper's), by default only the config's own, so that block-structured runs pair by seed with unstructured ones.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from sparsedm.errors import UserError
from sparsedm.experiments.baselines import SMALL_DENSE, find_method, get_method, has_sparsity, method_order
from sparsedm.sparse.methods import METHODS, dense_method, paper_methods

# Keys each run's overrides set; the sweep refuses them as user overrides.
GRID_KEYS = (
    "sparse.method",
    "sparse.sparsity",
    "sparse.prune_rate",
    "sparse.block_size",
    "seed",
    "sparse.seed",
    "small_dense",
)
# the sweep's options that set them, for the message refusing them as overrides
GRID_OPTIONS = "--methods, --sparsities, --prune-rates, --block-sizes and --seeds"


@dataclass(frozen=True)
class RunSpec:
    method: str
    sparsity: Optional[float]  # S; None for Dense
    prune_rate: Optional[float]  # p; None for Dense and Static-DM
    seed: int  # seeds the weights, data order and noise (`seed`) and the masks (`sparse.seed`)
    # b of the masks' b x b tiles; None (Dense, Small-Dense, a grid whose block sizes were left to the config) or
    # 1: unstructured
    block_size: Optional[int] = None

    @property
    def name(self) -> str:
        """e.g. rigl-S0.9-p0.1-seed0, and rigl-S0.9-p0.1-b16-seed0 with 16 x 16 tiles."""
        parts = [self.method]
        if self.sparsity is not None:
            parts.append(f"S{self.sparsity:g}")
        if self.prune_rate is not None:
            parts.append(f"p{self.prune_rate:g}")
        if self.block_size is not None and self.block_size > 1:
            parts.append(f"b{self.block_size}")
        return "-".join(parts + [f"seed{self.seed}"])

    def overrides(self) -> List[str]:
        if self.method == SMALL_DENSE.name:
            dense = dense_method().name
            return [
                f"sparse.method={dense}",
                f"small_dense={self.sparsity}",
                f"seed={self.seed}",
                f"sparse.seed={self.seed}",
            ]
        out = [f"sparse.method={self.method}", f"seed={self.seed}", f"sparse.seed={self.seed}"]
        if self.sparsity is not None:
            out.append(f"sparse.sparsity={self.sparsity}")
        if self.prune_rate is not None:
            out.append(f"sparse.prune_rate={self.prune_rate}")
        if self.block_size is not None:
            out.append(f"sparse.block_size={self.block_size}")
        return out


@dataclass
class SweepGrid:
    methods: List[str] = field(default_factory=paper_methods)  # of METHODS or small-dense; default the paper's
    sparsities: List[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9])  # S values
    prune_rates: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.5])  # p values of the dynamic methods
    seeds: int = 3  # seeds 0 .. seeds-1 for every grid point
    # b values of the sparse methods (1: unstructured); None: the config's sparse.block_size (sweep.resolve_grid)
    block_sizes: Optional[List[int]] = None

    def validate(self) -> "SweepGrid":
        unknown = [m for m in self.methods if find_method(m) is None]
        if unknown or not self.methods:
            raise UserError(f"--methods {' '.join(unknown)}: use some of {', '.join(METHODS)}, {SMALL_DENSE.name}")
        self.methods = list(dict.fromkeys(find_method(m).name for m in self.methods))
        if self.seeds < 1:
            raise UserError(f"--seeds {self.seeds} must be >= 1")
        if not self.sparsities or not all(0 < s < 1 for s in self.sparsities):
            raise UserError(f"--sparsities {self.sparsities}: each S must be in (0, 1)")
        if not self.prune_rates or not all(0 < p <= 1 for p in self.prune_rates):
            raise UserError(f"--prune-rates {self.prune_rates}: each p must be in (0, 1]")
        if self.block_sizes is not None and not (
            self.block_sizes and all(isinstance(b, int) and b >= 1 for b in self.block_sizes)
        ):
            raise UserError(f"--block-sizes {self.block_sizes}: each b must be an integer >= 1 (1: unstructured)")
        return self

    def runs(self) -> List[RunSpec]:
        """Every run of the grid, seed by seed (a partial sweep then covers whole seeds), Dense first; each sparse
        point at each block size, unstructured first."""
        self.validate()
        sparsities, prune_rates = sorted(set(self.sparsities)), sorted(set(self.prune_rates))
        blocks = sorted(set(self.block_sizes)) if self.block_sizes is not None else [None]
        out = []
        for seed in range(self.seeds):
            for method in sorted(self.methods, key=method_order):
                record = get_method(method)
                if not has_sparsity(method):
                    out.append(RunSpec(method, None, None, seed))
                elif not record.sparse:  # Small-Dense
                    out += [RunSpec(method, s, None, seed) for s in sparsities]
                elif not record.dynamic:
                    out += [RunSpec(method, s, None, seed, b) for s in sparsities for b in blocks]
                else:
                    out += [RunSpec(method, s, p, seed, b) for s in sparsities for p in prune_rates for b in blocks]
        return out
