"""The sparse engine: model-agnostic sparse-to-sparse training for PyTorch, by any method of methods.py
(the paper's Static, RigL, MagRan/SET; SNFS, GraNet, MEST).

Layout: the methods as records of parts (methods), which tensors (selection), how dense each is (density), the
masks (masks), when and how much to change (schedule), the parts: initial mask (initial_mask), drop score
(drop), grow rule (grow), sparsity over steps (density_schedule), regrowth per tensor (redistribution), what
they read (tensor_state); optimiser-state surgery (optim_state), the masked EMA (ema), the exploration rate
(exploration), the engine tying them to a training step (engine), parameter and FLOP accounting (cost),
compressed files (compress). How weights are stored, masked or compact, is a strategy the engine holds
(storage/); `sparse.kernels` parsed (kernel_plan); the sparse products for sampling and for compact training,
chosen per layer by measurement (kernels/).
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
