"""The EMAs other libraries keep, seen as the engine expects an EMA (`named_parameters()` under the sparse
module's names), for both integrations and without importing either library:

- sparsedm's `EMA`: itself;
- CompVis' `LitEma`: a module whose buffers are the weights named without dots, mapped by `m_name2s_name`;
- diffusers' `EMAModel` (every diffusers training example) and torch_ema's `ExponentialMovingAverage`
  (ChiroDiff's): a list `shadow_params` in the order of the parameters the average was made from.

The view is what the engine masks; the EMA itself is what is checkpointed (each has its own state_dict).
"""

from typing import Any, Iterable

from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import EMA


class LitEmaView:
    """A CompVis LitEma's buffers under the tracked model's parameter names."""

    def __init__(self, lit_ema: nn.Module):
        self.lit_ema = lit_ema

    def named_parameters(self):
        buffers = dict(self.lit_ema.named_buffers())
        return ((name, buffers[key]) for name, key in self.lit_ema.m_name2s_name.items() if key in buffers)


class ShadowListView:
    """An EMA's `shadow_params` (diffusers' EMAModel, torch_ema's) under the names of the module's parameters,
    whose first ones they must be."""

    def __init__(self, ema: Any, module: nn.Module):
        named = list(module.named_parameters())
        shadows = ema.shadow_params
        if len(shadows) < len(named) or any(s.shape != p.shape for s, (_, p) in zip(shadows, named)):
            raise UserError(
                "the EMA's shadow_params do not start with the sparse module's parameters; make the EMA from "
                "module.parameters() of the module the engine sparsifies"
            )
        self.ema, self.names = ema, [n for n, _ in named]

    def named_parameters(self):
        # read each time: EMAModel.load_state_dict and torch_ema's .to() replace the list
        return zip(self.names, self.ema.shadow_params)


def is_lit_ema(obj) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "m_name2s_name")


def is_ema(obj) -> bool:
    return isinstance(obj, EMA) or is_lit_ema(obj) or isinstance(getattr(obj, "shadow_params", None), list)


def ema_view(
    ema, module: nn.Module, sparse_names: Iterable[str], fix: str = "make it from the module the engine sparsifies"
):
    """The object the engine keeps sparse: a sparsedm EMA itself, a view of the others; it must have an entry
    for every name in `sparse_names` (the tensors the engine will make sparse), else `fix` says what to do."""
    if ema is None:
        return None
    if not is_ema(ema):
        raise UserError(
            f"the EMA is a {type(ema).__name__}, not a sparsedm EMA, a LitEma, a diffusers EMAModel or a "
            "torch_ema average"
        )
    if isinstance(ema, EMA):
        view = ema
    elif is_lit_ema(ema):
        view = LitEmaView(ema)
    else:
        view = ShadowListView(ema, module)
    if missing := sorted(set(sparse_names) - set(dict(view.named_parameters()))):
        raise UserError(f"the EMA has no entry for {missing[0]} (and {len(missing) - 1} more sparse tensors); {fix}")
    return view
