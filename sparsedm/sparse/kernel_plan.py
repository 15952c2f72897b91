"""`sparse.kernels` as a typed value: how sparse layers store their weights and compute their products.

Parsed once, by the config (config.py), with no kernel code imported; the engine, the storage and the trainer
receive the typed value. The spellings:

    masked       every sparse tensor stays dense with a mask (the default)
    measure      compact storage; per layer the faster of its products' best ways and the module's own
                 operation, measured on a training batch (a layer whose masked form is faster stays masked)
    compact      compact storage; every layer on its module's own operation (its weight scattered per call)
    FWD/DX/DW    compact storage; these ways forced on every layer, e.g. torch/torch/sampled

A compact layer computes three products with its weight W (kernels/products.py): the forward Y = W M, the
input gradient Wᵀ dY and the weight gradient dY Mᵀ at the active positions only. `WAYS` lists how each can
be computed: `matmul` (the dense matrix product of the scattered weight), `torch` (torch's CSR product),
`scipy` (scipy's CSR/CSC product, CPU only), `sampled` (torch's sampled_addmm: the product evaluated at the
pattern's positions only), `block` (dense products of the b x b tiles of a tile-structured mask, one per block-row
or block-column: only with sparse.block_size > 1).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from sparsedm.errors import UserError

WAYS = {  # the ways each product can be computed; the dense matrix product first
    "fwd": ("matmul", "torch", "scipy", "block"),
    "dx": ("matmul", "torch", "scipy", "block"),
    "dw": ("matmul", "sampled", "block"),
}
MATMUL_ONLY = ("matmul", "matmul", "matmul")


@dataclass(frozen=True)
class LayerPlan:
    """How one compact layer computes: its module's own operation (`ways` None) or a way per product."""

    ways: Optional[Tuple[str, str, str]] = None

    @property
    def module_op(self) -> bool:
        return self.ways is None

    @property
    def name(self) -> str:
        """ "module-op" or FWD/DX/DW: in logs and in the decision cache."""
        return "module-op" if self.ways is None else "/".join(self.ways)

    @classmethod
    def from_name(cls, name: str) -> "LayerPlan":
        if name == "module-op":
            return cls()
        ways = tuple(name.split("/"))
        if len(ways) != 3 or any(w not in WAYS[part] for w, part in zip(ways, WAYS)):
            raise UserError(
                f"{name!r} is no layer plan; write module-op or FWD/DX/DW with FWD, DX in {WAYS['fwd']} and DW in "
                f"{WAYS['dw']}"
            )
        return cls(ways)


MODULE_OP = LayerPlan()


@dataclass(frozen=True)
class KernelPlan:
    spelling: str  # as the config gave it, for messages
    compact: bool  # sparse layers keep only their active weights
    forced: Optional[LayerPlan] = None  # compact: the plan of every layer, or None to measure one per layer

    def check_blocks(self, block_size: int) -> None:
        """A forced plan with the block way needs masks of tiles: UserError in one line without them."""
        if block_size == 1 and self.forced is not None and not self.forced.module_op and "block" in self.forced.ways:
            raise UserError(
                f"sparse.kernels={self.spelling} uses the block way, which needs tile-structured masks; set "
                "sparse.block_size > 1 or choose other ways"
            )

    @classmethod
    def parse(cls, value: str, key: str = "sparse.kernels") -> "KernelPlan":
        if value == "masked":
            return cls(value, compact=False)
        if value == "measure":
            return cls(value, compact=True)
        if value == "compact":
            return cls(value, compact=True, forced=MODULE_OP)
        if value.count("/") == 2:
            try:
                return cls(value, compact=True, forced=LayerPlan.from_name(value))
            except UserError:
                pass
        raise UserError(
            f"{key}={value!r} is unknown; use masked, measure, compact or a plan FWD/DX/DW with FWD, DX in "
            f"{WAYS['fwd']} and DW in {WAYS['dw']}"
        )
