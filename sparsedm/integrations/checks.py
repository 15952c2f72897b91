"""What both integrations refuse or report alike: compact kernels (their loops train masked layers), and a
save of the sparse module holding non-zeros where its masks are zero (sparse/sparsity_check.py)."""

from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.sparsity_check import check_when_saved


def refuse_compact_kernels(config: SparseConfig, where: str) -> None:
    """Compact layers need sparsedm's trainer (it swaps the layers and the optimiser's tensors before its loop)."""
    if config.kernel_plan.compact:
        raise UserError(
            f"sparse.kernels={config.kernels!r}: compact kernels are supported by `sparsedm train` only; {where} "
            "trains masked layers, so leave sparse.kernels at its default, masked"
        )


def check_saves(engine: SparseEngine, module: nn.Module, give_ema: str):
    """Warn in one line when a state dict of `module` is not sparse at the engine's masks of that moment: the
    weights of an EMA the engine does not keep sparse, copied in before saving (`EMAModel.copy_to`, then
    `save_pretrained`). Returns the hook's handle."""
    fix = f"weights copied in from an EMA are sparse only if that EMA is given to {give_ema}"
    return check_when_saved(module, lambda: engine.masks, "the sparse model", fix)
