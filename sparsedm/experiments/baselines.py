"""The configurations a sweep and its report know: the engine's methods (sparse/methods.py) and Small-Dense.

Small-Dense is no method of the engine: its runs are Dense runs (sparse.method=dense) whose denoiser the config's
`small_dense` = S narrowed to the non-zero count of a sparse model at S (tasks/width.py). The sweep grid spans it
once per S and seed (run names as small-dense-S0.5-seed0), and the report groups its runs under
"small-dense" at that S: a row of its own with its real parameters and FLOPs, and the dense model of the same
size that every sparse configuration of that S is paired with, beside Dense. Lookups here take either kind.
"""

from typing import Optional

from sparsedm.errors import UserError
from sparsedm.sparse.methods import METHODS, Method, dense_method
from sparsedm.sparse.methods import find_method as find_engine_method
from sparsedm.sparse.methods import method_order as engine_method_order

SMALL_DENSE = Method(
    "small-dense",
    "Small-Dense",
    sparse=False,
    dynamic=False,
    train_flops=dense_method().train_flops,
    colour="tab:gray",
    aliases=("small_dense",),
)


def find_method(name: str) -> Optional[Method]:
    """An engine method by name or alias, or Small-Dense; None if neither."""
    if name == SMALL_DENSE.name or name in SMALL_DENSE.aliases:
        return SMALL_DENSE
    return find_engine_method(name)


def get_method(name: str) -> Method:
    method = find_method(name)
    if method is None:
        raise UserError(f"method {name!r} is unknown; use one of {', '.join(METHODS)} or {SMALL_DENSE.name}")
    return method


def is_small_dense(name: str) -> bool:
    return get_method(name) is SMALL_DENSE


def is_dense(name: str) -> bool:
    """The full-width Dense baseline (not Small-Dense)."""
    return get_method(name).name == dense_method().name


def has_sparsity(name: str) -> bool:
    """Whether the configuration is defined at an S: the sparse methods, and Small-Dense (the S it matches)."""
    method = get_method(name)
    return method.sparse or method is SMALL_DENSE


def method_order(name: str) -> float:
    """Where a configuration comes in tables, plots and sweeps: Small-Dense right after Dense."""
    if is_small_dense(name):
        return engine_method_order(dense_method().name) + 0.5
    return engine_method_order(name)
