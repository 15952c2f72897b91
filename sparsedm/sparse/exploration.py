"""The exploration rate R: the share of a tensor's weights that were active at some point of training.

In-time over-parameterisation (Liu et al. 2021, "Do we actually need dense over-parameterization?"):
a dynamic sparse run explores more of the dense network than any one of its masks holds. Per tensor,

    R = |M_0 ∪ M_1 ∪ ... ∪ M_t| / numel     (M_i: the mask after update i)

Static-DM never changes its mask, so its R is its density; RigL and MagRan raise R with every update that
grows a connection never active before, up to 1. One bit per weight records "ever active", packed eight to a
byte: a bool per weight cost as much as the masks themselves, which in compact storage is a large share of what
a run holds (train/state_bytes.py). Checkpoints keep one bool per weight, as before.
"""

import logging
import math
from typing import Dict, List

import torch

from sparsedm.errors import UserError

log = logging.getLogger(__name__)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as bits, eight to a uint8 (flat, zero-padded to a whole byte)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that pack_bits packed into `bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = (bits[:, None] >> shifts) & 1
    return flat.reshape(-1)[: torch.Size(shape).numel()].to(torch.bool).view(shape)


class ExploredPositions:
    def __init__(self, masks: Dict[str, torch.Tensor]):
        self._shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self._bits = {n: pack_bits(m) for n, m in masks.items()}

    @property
    def ever_active(self) -> Dict[str, torch.Tensor]:
        """{name: bool tensor shaped like the weight}, made for this call from the packed bits."""
        return {n: unpack_bits(bits, self._shapes[n]) for n, bits in self._bits.items()}

    def tensors(self) -> List[torch.Tensor]:
        """The tensors the record holds (for counting its bytes)."""
        return list(self._bits.values())

    def add(self, name: str, grown: torch.Tensor) -> None:
        """Mark the flat indices `grown` of tensor `name` as explored (an update's work: O(numel))."""
        seen = unpack_bits(self._bits[name], self._shapes[name]).view(-1)
        seen[grown] = True
        self._bits[name] = pack_bits(seen)

    def _counts(self) -> Dict[str, int]:
        """Ever-active weights per tensor (the padding bits are zero)."""
        table = torch.tensor([bin(b).count("1") for b in range(256)])
        return {n: int(table.to(bits.device)[bits.long()].sum()) for n, bits in self._bits.items()}

    def rates(self) -> Dict[str, float]:
        """R per tensor."""
        return {n: count / math.prod(self._shapes[n]) for n, count in self._counts().items()}

    def rate(self) -> float:
        """R over all sparse tensors together (ever-active weights / all their weights); 1.0 with none (dense)."""
        total = sum(math.prod(shape) for shape in self._shapes.values())
        return sum(self._counts().values()) / total if total else 1.0

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {n: seen.cpu() for n, seen in self.ever_active.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> None:
        """Take a saved record; a checkpoint from before the record existed (None) starts from `masks`."""
        if state is None:
            log.warning("the checkpoint has no exploration record (older sparsedm): the rate counts from its masks")
            self.__init__(masks)
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
        self._shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self._bits = {n: pack_bits(state[n].to(device=m.device, dtype=torch.bool)) for n, m in masks.items()}
