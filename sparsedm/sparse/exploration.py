"""The exploration rate R: the share of a tensor's weights that were active at some point of training.

In-time over-parameterisation (Liu et al. 2021, "Do we actually need dense over-parameterization?"):
a dynamic sparse run explores more of the dense network than any one of its masks holds. Per tensor,

    R = |M_0 ∪ M_1 ∪ ... ∪ M_t| / numel     (M_i: the mask after update i)

Static-DM never changes its mask, so its R is its density; RigL and MagRan raise R with every update that
grows a connection never active before, up to 1. One bool per weight records "ever active".
"""

import logging
from typing import Dict

import torch

from sparsedm.errors import UserError

log = logging.getLogger(__name__)


class ExploredPositions:
    def __init__(self, masks: Dict[str, torch.Tensor]):
        self.ever_active = {n: m.clone() for n, m in masks.items()}

    def add(self, name: str, grown: torch.Tensor) -> None:
        """Mark the flat indices `grown` of tensor `name` as explored."""
        self.ever_active[name].view(-1)[grown] = True

    def rates(self) -> Dict[str, float]:
        """R per tensor."""
        return {n: int(seen.sum()) / seen.numel() for n, seen in self.ever_active.items()}

    def rate(self) -> float:
        """R over all sparse tensors together (ever-active weights / all their weights); 1.0 with none (dense)."""
        total = sum(seen.numel() for seen in self.ever_active.values())
        return sum(int(seen.sum()) for seen in self.ever_active.values()) / total if total else 1.0

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {n: seen.cpu() for n, seen in self.ever_active.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> None:
        """Take a saved record; a checkpoint from before the record existed (None) starts from `masks`."""
        if state is None:
            log.warning("the checkpoint has no exploration record (older sparsedm): the rate counts from its masks")
            self.ever_active = {n: m.clone() for n, m in masks.items()}
            return
        for name, mask in masks.items():
            seen = state.get(name)
            if (
                seen is None
                or tuple(seen.shape) != tuple(mask.shape)
                or bool((mask & ~seen.to(mask.device, torch.bool)).any())
            ):
                raise UserError(
                    f"the checkpoint's exploration record for {name} does not fit its masks; the checkpoint is corrupt"
                )
        self.ever_active = {n: state[n].to(device=m.device, dtype=torch.bool) for n, m in masks.items()}
