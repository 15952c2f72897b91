"""What a method's parts read about one sparse tensor at a mask update (methods.py composes the parts).

Each part declares what it reads (`@reads(Read.WEIGHT)`); a method reads what its parts read together, the
engine fills exactly those fields of the TensorState (the others are None), and a storage that cannot supply
one refuses the method at start-up (storage/). The mask, the name and the generator are always given.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Callable, FrozenSet, Optional, TypeVar

import torch


class Read(Enum):
    WEIGHT = "weights"  # the weight, zero at masked entries
    GRAD = "masked gradient"  # dL/dW of the last step at the active entries, zero elsewhere
    DENSE_GRAD = "dense gradient"  # dL/dW at every entry on the update step (summed over grad_accumulation batches)
    MOMENTUM = "optimiser moments"  # the optimiser's first moment at the active entries
    # the first moment of every entry: the optimiser sees dense gradients, so inactive weights keep moments
    DENSE_MOMENTUM = "moments of inactive weights"


Part = TypeVar("Part", bound=Callable)


def reads(*what: Read) -> Callable[[Part], Part]:
    """Mark a part with what it reads (its `reads` attribute)."""

    def mark(part: Part) -> Part:
        part.reads = frozenset(what)
        return part

    return mark


def reads_of(part: Optional[Callable]) -> FrozenSet[Read]:
    """What a part reads; every part that gets a TensorState declares it (a part without is an error here)."""
    return frozenset() if part is None else part.reads


@dataclass
class TensorState:
    name: str  # the parameter's name in the model
    mask: torch.Tensor  # the topology before the update, True where active
    generator: torch.Generator  # seeded identically on every rank
    weight: Optional[torch.Tensor] = None  # Read.WEIGHT: the dense weight (masked entries are zero)
    grad: Optional[torch.Tensor] = None  # Read.GRAD
    dense_grad: Optional[torch.Tensor] = None  # Read.DENSE_GRAD
    momentum: Optional[torch.Tensor] = None  # Read.MOMENTUM / DENSE_MOMENTUM; None before the optimiser's step 1
