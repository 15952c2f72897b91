"""The storage interface: what the engine asks of whatever holds its sparse weights.

The engine keeps the topology (masks, counts, schedule, generator) and never looks at how weights are held;
a storage keeps the weights (and, for compact layers, their moments and EMA entries) and never touches the
engine. At a mask update the storage lends dense views of what the method's parts read; the engine's surgery
runs on them, and the storage stores the result at the new masks.
"""

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Optional

import torch

from sparsedm.errors import UserError
from sparsedm.sparse.tensor_state import Read


@dataclass
class DenseViews:
    """Dense tensors by sparse weight name for one mask update. The optimiser's state of a weight is keyed by
    its view (masked storage: the Parameter itself), so the engine reads and zeroes moments through it."""

    weights: Dict[str, torch.Tensor]
    grads: Dict[str, torch.Tensor] = field(default_factory=dict)  # Read.GRAD, when a part reads it
    ema: Dict[str, torch.Tensor] = field(default_factory=dict)  # the EMA's dense weights that follow the surgery


class Storage:
    SUPPLIES: FrozenSet[Read] = frozenset()  # what this storage can give a method's parts

    @classmethod
    def check_method(cls, method, spelling: str) -> None:
        """Refuse, in one line, a method whose parts read what this storage cannot supply."""
        missing = method.reads - cls.SUPPLIES
        if missing:
            what = ", ".join(sorted(r.value for r in missing))
            raise UserError(
                f"sparse.method={method.name} reads {what}, which sparse.kernels={spelling} does not hold; "
                "use sparse.kernels=masked"
            )

    def tensors(self) -> Dict[str, torch.Tensor]:
        """{name: the tensor the optimiser and the EMA see for that sparse weight}."""
        raise NotImplementedError

    def request_dense_gradients(self, on: bool) -> None:
        """From the next backward on, make dL/dW at every entry available (RigL's window), or stop; a storage
        whose gradients are dense anyway (masked) has nothing to do."""

    def dense_gradients(self) -> Dict[str, Optional[torch.Tensor]]:
        """Fresh tensors of dL/dW at every entry, from the last backward; None where there was none."""
        raise NotImplementedError

    def mask_gradients(self, masks: Mapping[str, torch.Tensor]) -> None:
        """After the backward: the gradients of inactive weights are zero (NaN-safe)."""
        raise NotImplementedError

    def zero_masked_weights(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Inactive weights are zero (a guard, and after an optimiser that saw dense gradients)."""
        raise NotImplementedError

    def apply_masks(self, masks: Mapping[str, torch.Tensor], moments: bool) -> None:
        """Inactive weights, their EMA entries and (with `moments`) optimiser moments are zero (init, a load)."""
        raise NotImplementedError

    def dense_views(self, masks: Mapping[str, torch.Tensor], reads: FrozenSet[Read]) -> AbstractContextManager:
        """A context giving DenseViews for an update; on exit the weights are stored at `masks` (read then)."""
        raise NotImplementedError

    def refuse_new_masks(self, what: str) -> None:
        """Raise when this storage cannot take masks from elsewhere (a checkpoint, a file) or be compacted."""

    def densify(self) -> "Storage":
        """The masked storage of the same weights, the model's own layers back in place."""
        raise NotImplementedError
