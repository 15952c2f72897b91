"""Is a module (or a state dict) still sparse? Non-zero weights where the masks are False, reported in one line.

A sparse run's weights stay zero at masked positions by construction, but weights from elsewhere can be put
into the sparse model before it is saved: an EMA the engine was not given (and so never masked), copied in with
diffusers' `EMAModel.copy_to` before `save_pretrained`. The model then saved is dense at masked positions and
nothing else says so. The check warns rather than refuses: the weights are still what the user asked to save
(a deliberately dense export, a debugging copy), and a state dict is also taken outside saving.
"""

import logging
from typing import Callable, Dict, Mapping, Union

import torch
from torch import nn

log = logging.getLogger(__name__)


def masked_nonzeros(masks: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Per tensor with any: how many entries are non-zero where its mask is False (names missing are skipped)."""
    counts = {}
    for name, mask in masks.items():
        tensor = tensors.get(name)
        if tensor is None or tuple(tensor.shape) != tuple(mask.shape):
            continue
        count = int(torch.count_nonzero(tensor.detach()[~mask.to(tensor.device)]))
        if count:
            counts[name] = count
    return counts


def check_sparse(
    masks: Mapping[str, torch.Tensor],
    module_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
    what: str,
    fix: str = "",
    prefix: str = "",
) -> int:
    """Log one warning line when `module_or_state` holds non-zeros where `masks` (by parameter name, looked up
    as `prefix + name`) are False; return their count (0: sparse)."""
    if isinstance(module_or_state, nn.Module):
        tensors = dict(module_or_state.named_parameters())
    else:
        tensors = {name[len(prefix) :]: t for name, t in module_or_state.items() if name.startswith(prefix)}
    counts = masked_nonzeros(masks, tensors)
    total = sum(counts.values())
    if total:
        first = next(iter(counts))
        log.warning(
            "%s is not sparse: %d non-zero weights at masked positions in %d of its %d sparse tensors (%s: %d)%s",
            what,
            total,
            len(counts),
            len(masks),
            first,
            counts[first],
            f"; {fix}" if fix else "",
        )
    return total


def check_when_saved(module: nn.Module, masks: Callable[[], Mapping[str, torch.Tensor]], what: str, fix: str):
    """Run `check_sparse` on every `module.state_dict()` (a checkpoint, `save_pretrained`, `torch.save`), with
    the masks of that moment; returns the hook's handle (`.remove()` it)."""

    def hook(module, state_dict, prefix, local_metadata):
        check_sparse(masks(), state_dict, f"{what} being saved", fix, prefix)

    return module.register_state_dict_post_hook(hook)
