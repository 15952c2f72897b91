"""Which tensors are sparse.

Default rule (the paper's): every weight with at least 2 dimensions, except the timestep-embedding
layers; biases and norm parameters (1-D) are never sparse. `include` / `exclude` regexes refine it.
Works for Conv*/Linear weights, GRU/LSTM `weight_ih_l*` / `weight_hh_l*` and attention projections.
"""

import re
from typing import Dict, List

from torch import nn

from sparsedm.errors import UserError

# Names of timestep-embedding layers: diffusers' `time_embedding.linear_1`, LDM's `time_embed.0`,
# ChiroDiff's `time_embedding.*`, diffusers transformers' `timestep_embedder.linear_1` (DiT, PixArt, SD3) and the
# class embedding added to it in DiT's conditioning (`class_embedder`: with one class, a learnt constant of it).
TIME_EMBEDDING_PATTERN = r"(^|\.)(time_embed(ding)?|timestep_embedder|class_embedder)(\.|$)"


def _unmatched(patterns: List[str], names: List[str]) -> List[str]:
    return [p for p in patterns if not any(re.search(p, n) for n in names)]


def select_sparse_parameters(
    model: nn.Module,
    include: List[str] = (),
    exclude: List[str] = (),
    exclude_time_embedding: bool = True,
) -> Dict[str, nn.Parameter]:
    """Return {name: parameter} of the tensors to sparsify, in `named_parameters` order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for bad in _unmatched(list(patterns), names):
            raise UserError(
                f"sparse.{kind} pattern {bad!r} matches no parameter of the model; check the names in model.named_parameters()"
            )

    selected = {}
    for name, param in named:
        if param.dim() < 2:
            continue
        if include and not any(re.search(p, name) for p in include):
            continue
        if any(re.search(p, name) for p in exclude):
            continue
        if exclude_time_embedding and re.search(TIME_EMBEDDING_PATTERN, name):
            continue
        selected[name] = param
    if not selected:
        raise UserError("no parameter is left to sparsify; loosen sparse.include / sparse.exclude")
    return selected
