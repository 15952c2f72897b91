"""What a method's parts read about one sparse tensor at a mask update (methods.py composes the parts)."""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TensorState:
    name: str  # the parameter's name in the model
    weight: torch.Tensor  # the parameter (masked entries are zero)
    mask: torch.Tensor  # the topology before the update, True where active
    dense_grad: Optional[torch.Tensor]  # dL/dW on all entries (methods with needs_dense_gradient), else None
    momentum: Optional[torch.Tensor]  # the optimiser's first moment (Adam's exp_avg, SGD's buffer); None before step 1
    generator: torch.Generator  # seeded identically on every rank
