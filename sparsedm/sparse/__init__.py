"""The sparse engine: model-agnostic sparse-to-sparse training (Static, RigL, MagRan/SET) for PyTorch.

Layout: which tensors (selection), how dense each is (density), the masks (masks), when and how much to
change (schedule), what to remove (drop) and add (grow), optimiser-state surgery (optim_state), the masked
EMA (ema), the engine tying them to a training step (engine), parameter and FLOP accounting (cost); after
training, sparse inference kernels chosen per layer by measurement (kernels) and compressed files (compress).
"""

from sparsedm.sparse.config import SparseConfig
from sparsedm.sparse.cost import count_parameters, forward_flops, masked_densities, sampling_flops, train_flops_per_step
from sparsedm.sparse.ema import EMA
from sparsedm.sparse.engine import SparseEngine, TensorReport
from sparsedm.sparse.report import format_report

__all__ = [
    "EMA",
    "SparseConfig",
    "SparseEngine",
    "TensorReport",
    "count_parameters",
    "format_report",
    "forward_flops",
    "masked_densities",
    "sampling_flops",
    "train_flops_per_step",
]
