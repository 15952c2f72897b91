"""Masked storage: every sparse tensor stays a dense Parameter of the model, zero where its mask is 0.

The optimiser and the EMA see the model's own Parameters; the gradients of inactive weights are zeroed after
each backward (unless the method lets the optimiser see dense gradients), so Adam, AdamW and SGD leave those
weights at exactly zero. A mask update works on the Parameters themselves.
"""

from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, Optional

import torch
from torch import nn

from sparsedm.sparse.masks import apply_masks_, mask_gradients_
from sparsedm.sparse.optim_state import mask_moments_
from sparsedm.sparse.storage.base import DenseViews, Storage
from sparsedm.sparse.tensor_state import Read


class MaskedStorage(Storage):
    SUPPLIES = frozenset(Read)

    def __init__(self, params: Dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, ema=None):
        self.params, self.optimizer, self.ema = params, optimizer, ema

    def tensors(self) -> Dict[str, torch.Tensor]:
        return dict(self.params)

    def dense_gradients(self) -> Dict[str, Optional[torch.Tensor]]:
        return {n: p.grad.clone() if p.grad is not None else None for n, p in self.params.items()}

    def _own(self, masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {n: masks[n] for n in self.params}

    def mask_gradients(self, masks: Mapping[str, torch.Tensor]) -> None:
        mask_gradients_(self.params, self._own(masks))

    def zero_masked_weights(self, masks: Mapping[str, torch.Tensor]) -> None:
        apply_masks_(self.params, self._own(masks))

    @torch.no_grad()
    def apply_masks(self, masks: Mapping[str, torch.Tensor], moments: bool) -> None:
        own = self._own(masks)
        apply_masks_(self.params, own)
        if moments:
            for name, param in self.params.items():
                mask_moments_(self.optimizer, param, own[name])
        if self.ema is not None:
            apply_masks_(dict(self.ema.named_parameters()), own)

    @contextmanager
    def dense_views(self, masks: Mapping[str, torch.Tensor], reads) -> Iterator[DenseViews]:
        grads = {}
        if Read.GRAD in reads:
            for name, p in self.params.items():
                grads[name] = p.grad * masks[name] if p.grad is not None else torch.zeros_like(p)
        ema = {n: p for n, p in self.ema.named_parameters() if n in self.params} if self.ema is not None else {}
        yield DenseViews(dict(self.params), grads, ema)

    def densify(self) -> "MaskedStorage":
        return self
