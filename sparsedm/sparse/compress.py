"""Compressed weights: each sparse tensor as its non-zeros plus a bit-packed mask, in one safetensors file.

    save_compressed("unet_sparse.safetensors", model.state_dict(), masks=engine.masks)
    state, masks = load_compressed("unet_sparse.safetensors")  # state: bit-identical to the saved state dict

A sparse tensor NAME is stored as NAME::values (its entries at the mask's True positions, in row-major order)
and NAME::mask (uint8, 8 positions per byte, numpy's `packbits` order); its shape and dtype go in the
metadata. At S = 0.9 that is 0.1 x 4 + 1/8 bytes per fp32 entry, 0.13x of dense. A stored mask is the given
training mask, widened by any entry that is not bit-for-bit +0.0 outside it, so loading restores every bit.
Without `masks`, every floating-point tensor is stored this way where that is smaller than dense.
docs/format.md specifies the file for readers without sparsedm; FORMAT_VERSION changes with any change to it.
"""

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsedm.errors import UserError

FORMAT_KEY = "sparsedm.compressed"  # metadata: {name: {"shape": [...], "dtype": "float32"}} of the sparse tensors
VALUES, MASK = "::values", "::mask"
FORMAT_VERSION_KEY = "sparsedm.format_version"  # metadata of the compressed file and of export's masks file
FORMAT_VERSION = "1"  # files written before the key existed lack it and have this layout
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size integers to read raw bits


def nonzero_bits(tensor: torch.Tensor) -> torch.Tensor:
    """True where the entry is not bit-for-bit zero (-0.0 counts as non-zero: it must come back as -0.0)."""
    return tensor.contiguous().view(_BITS[tensor.element_size()]) != 0


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy()))


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    numel = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool)).reshape(shape)


def check_format_version(path, metadata: Dict[str, str]) -> None:
    """A one-line UserError for a file of a format version this sparsedm does not read."""
    version = metadata.get(FORMAT_VERSION_KEY, FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path} has {FORMAT_VERSION_KEY}={version!r}, and this sparsedm reads version {FORMAT_VERSION}: "
            "upgrade sparsedm, or export the run again with this one"
        )


def _worth_compressing(tensor: torch.Tensor, mask: torch.Tensor) -> bool:
    dense = tensor.numel() * tensor.element_size()
    return int(mask.sum()) * tensor.element_size() + (tensor.numel() + 7) // 8 < dense


def compress_state_dict(
    state: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]] = None
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(tensors to save, {name: shape and dtype} of the compressed ones); see the module's docstring."""
    tensors, layout = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if VALUES in name or MASK in name:
            raise UserError(f"tensor name {name!r} contains {VALUES!r} or {MASK!r}, which this format reserves")
        if not tensor.is_floating_point() or tensor.dim() == 0:
            tensors[name] = tensor.contiguous()
            continue
        mask = nonzero_bits(tensor)
        if masks is not None and name in masks:
            mask |= masks[name].cpu().bool()
        elif masks is not None or not _worth_compressing(tensor, mask):
            tensors[name] = tensor.contiguous()
            continue
        tensors[name + VALUES] = tensor[mask].contiguous()
        tensors[name + MASK] = pack_mask(mask)
        layout[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    return tensors, layout


def save_compressed(
    path, state: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]] = None, metadata=None
) -> int:
    """Write the compressed state dict (tensors in `masks` sparse, or every one where smaller); returns bytes."""
    tensors, layout = compress_state_dict(state, masks)
    save_file(
        tensors,
        str(path),
        metadata={**(metadata or {}), FORMAT_VERSION_KEY: FORMAT_VERSION, FORMAT_KEY: json.dumps(layout)},
    )
    return Path(path).stat().st_size


def load_compressed(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(state dict, {name: stored mask} of the sparse tensors) of a file `save_compressed` wrote."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; write it with `sparsedm export RUN --out DIR --compress`")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if FORMAT_KEY not in metadata:
            raise UserError(f"{path} is not a compressed sparsedm file (no {FORMAT_KEY!r} metadata)")
        check_format_version(path, metadata)
        layout = json.loads(metadata[FORMAT_KEY])
        raw = {name: f.get_tensor(name) for name in f.keys()}
    state, masks = {}, {}
    for name, tensor in raw.items():
        if not name.endswith((VALUES, MASK)):
            state[name] = tensor
    for name, info in layout.items():
        mask = unpack_mask(raw[name + MASK], info["shape"])
        tensor = torch.zeros(info["shape"], dtype=getattr(torch, info["dtype"]))
        tensor[mask] = raw[name + VALUES]
        state[name], masks[name] = tensor, mask
    return state, masks


def dense_bytes(state: Dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors themselves, as a dense file holds them."""
    return sum(t.numel() * t.element_size() for t in state.values())


SPARSE_TENSOR = "__sparsedm_sparse_tensor__"  # marks a tensor stored as non-zeros + packed mask in a nested state


def shrink_tensors(obj):
    """A nested state (dicts, lists, tensors: a checkpoint) with every floating-point tensor whose zeros make it
    smaller stored as {values, packed mask, shape, dtype}; `expand_tensors` restores every bit. Masked weights,
    their EMA copies and their optimiser moments are exact zeros, so a sparse run's checkpoint shrinks with S."""
    if isinstance(obj, dict):
        return {key: shrink_tensors(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(shrink_tensors(value) for value in obj)
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point() or obj.dim() == 0:
        return obj
    tensor = obj.detach().cpu()
    mask = nonzero_bits(tensor)
    if not _worth_compressing(tensor, mask):
        return obj
    return {
        SPARSE_TENSOR: True,
        "values": tensor[mask].contiguous(),
        "mask": pack_mask(mask),
        "shape": list(tensor.shape),
        "device": str(obj.device),
    }


def expand_tensors(obj, map_location=None):
    """The inverse of `shrink_tensors`; tensors go to `map_location` (None: where they were saved from)."""
    if isinstance(obj, dict):
        if obj.get(SPARSE_TENSOR) is True:
            values = obj["values"]
            tensor = torch.zeros(obj["shape"], dtype=values.dtype)
            tensor[unpack_mask(obj["mask"].cpu(), obj["shape"])] = values.cpu()
            return tensor.to(map_location if map_location is not None else obj["device"])
        return {key: expand_tensors(value, map_location) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(expand_tensors(value, map_location) for value in obj)
    return obj
