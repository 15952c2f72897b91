"""Sparse inference kernels, chosen per layer by measurement: a masked model that samples faster than dense.

    choices = use_sparse_kernels(model, lambda: model(x, t), names=masks.keys(), cache_dir="data/cache/kernels")

Every Linear, Conv1d and Conv2d whose weight is sparse (in `names`, or holding exact zeros) is timed on the
input it sees in one example forward: the dense module against each sparse kernel that fits it, interleaved,
the best of `repeats`. It is swapped only where a sparse kernel beats dense by `margin`. The kernels multiply a
CSR copy of the weight with a dense matrix, by torch's sparse product (`torch`: MKL on CPU, cuSPARSE on CUDA)
or by scipy's (`scipy`, CPU only): neither wins everywhere (torch's is ~20x slower than scipy's on the
(432 x 48) @ (48 x 4096) product of a 48-channel 3 x 3 convolution at S = 0.9, measured on an AMD EPYC).
A kernel is named KIND:BACKEND, e.g. `taps:scipy`:

    linear   y = W x + b                          W: (out, in) CSR; or `linear:block`, for weights of b x b tiles
                                                  (sparse.block_size b > 1): products.py's block way
    taps     Z = W_taps X, y = Σ_(dy,dx) shift(Z)  W_taps: (kh·kw·out, in) CSR, X the input as (in, B·H·W);
             a kh x kw convolution as kh·kw 1 x 1 ones whose outputs are added shifted (stride 1)
    unfold   y = W cols                           W: (out, in·kh·kw) CSR, cols = im2col(x) (any stride)

Decisions go through measure.py's mechanism, cached in `cache_dir`/sampling_kernels.json by machine and by
layer (kind, weight shape, non-zeros, input shape), so a second conversion of the same model times nothing.
A layer where no kernel wins keeps its module (its choice is None).
Outputs equal the dense masked module's to fp32 rounding (sums in another order). Inference only: the sparse
modules hold detached copies of the weights.
"""

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import scipy.sparse
import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.sparse.blocks import BlockGrid, matrix_shape
from sparsedm.sparse.kernels.block_pattern import BlockPattern
from sparsedm.sparse.kernels.layers import conv_geometry, fits
from sparsedm.sparse.kernels.measure import (
    DecisionCache,
    best_of,
    capture_inputs,
    choose_per_layer,
    device_sync,
    inputs_of,
    replace_module,
)

CACHE_FILE = "sampling_kernels.json"
KINDS = ("linear", "taps", "unfold")
BACKENDS = ("torch", "scipy")
BLOCK = "linear:block"  # a Linear of b x b tiles: dense products per block-row
KERNELS = (*(f"{kind}:{backend}" for kind in KINDS for backend in BACKENDS), BLOCK)  # `kernels=` restricts them


@dataclass
class LayerChoice:
    name: str  # module name in the model
    kind: str  # Linear | Conv1d | Conv2d
    weight_shape: List[int]
    input_shape: List[int]
    sparsity: float  # fraction of exact zeros in the weight
    kernel: Optional[str]  # the sparse kernel that replaced the module, None where the module was kept
    speedup: Optional[float]  # dense time / best sparse time; None when forced (not timed)


def to_csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return matrix.contiguous().to_sparse_csr()


class CsrProduct:
    """M -> W M for a dense 2-D M, with W stored in CSR for the `torch` or the `scipy` product."""

    def __init__(self, matrix: torch.Tensor, backend: str):
        self.backend = backend
        if backend == "scipy":
            self.weight = scipy.sparse.csr_matrix(matrix.detach().cpu().numpy())
        else:
            self.weight = to_csr(matrix.detach())

    def __call__(self, dense: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """W M (+ bias per row)."""
        if self.backend == "scipy":
            y = torch.from_numpy(self.weight @ dense.numpy())
            return y if bias is None else y.add_(bias[:, None])
        return self.weight @ dense if bias is None else torch.addmm(bias[:, None], self.weight, dense)


class SparseLinear(nn.Module):
    """y = W x + b with W in CSR; x of shape (..., in)."""

    def __init__(self, linear: nn.Linear, backend: str = "torch"):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.backend, self.product = backend, CsrProduct(linear.weight, backend)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).t()  # (in, N): the product reads X column-major, no copy
        return self.product(rows, self.bias).t().reshape(*x.shape[:-1], self.out_features)


class BlockLinear(nn.Module):
    """y = W x + b with W's b x b tiles that hold a non-zero multiplied as dense blocks; x of shape (..., in)."""

    def __init__(self, linear: nn.Linear, block: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        grid = BlockGrid(weight.shape, block)
        self.pattern = BlockPattern(grid.expand_mask(grid.pool_mask(weight != 0)), block)
        self.values = self.pattern.gather(weight)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pattern.forward_values(self.values, x.reshape(-1, self.in_features).t(), "block")
        y = y if self.bias is None else y.add_(self.bias[:, None])
        return y.t().reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """A groups=1, zero-padded Conv2d (or a Conv1d seen as 1 x k) with a CSR weight, by `taps` or `unfold`."""

    def __init__(self, conv: nn.Module, kernel: str, backend: str = "torch"):
        super().__init__()
        self.one_d = isinstance(conv, nn.Conv1d)
        weight = conv.weight.detach()
        if self.one_d:
            weight = weight[:, :, None, :]
        self.out_channels, self.in_channels, self.kh, self.kw = weight.shape
        self.stride, self.padding, self.dilation = conv_geometry(conv)
        self.kernel, self.backend = kernel, backend
        if kernel == "taps":  # rows (dy, dx, out): one 1 x 1 convolution per tap
            self.product = CsrProduct(weight.permute(2, 3, 0, 1).reshape(-1, self.in_channels), backend)
        else:
            self.product = CsrProduct(weight.reshape(self.out_channels, -1), backend)
        self.bias = None if conv.bias is None else conv.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, None] if self.one_d else x
        y = self._taps(x) if self.kernel == "taps" else self._unfold(x)
        if self.bias is not None:
            y += self.bias.view(1, -1, 1, 1)
        return y[:, :, 0] if self.one_d else y

    def _out_size(self, size: int, axis: int) -> int:
        k = (self.kh, self.kw)[axis]
        return (size + 2 * self.padding[axis] - self.dilation[axis] * (k - 1) - 1) // self.stride[axis] + 1

    def _taps(self, x: torch.Tensor) -> torch.Tensor:
        """y[:, :, i, j] = Σ_(dy,dx) Z[dy, dx, :, :, i + dy - p, j + dx - p], summed in Z's (out, B) order, which
        keeps the additions' rows contiguous (3-4x faster than F.fold's col2im or adding into (B, out) order)."""
        batch, channels, height, width = x.shape
        h_out, w_out = self._out_size(height, 0), self._out_size(width, 1)
        z = self.product(x.transpose(0, 1).reshape(channels, -1))
        z = z.view(self.kh, self.kw, self.out_channels, batch, height, width)
        y = x.new_zeros(self.out_channels, batch, h_out, w_out)
        for dy in range(self.kh):
            oy = dy - self.padding[0]  # output row i reads input row i + oy
            i0, i1 = max(0, -oy), min(h_out, height - oy)
            for dx in range(self.kw):
                ox = dx - self.padding[1]
                j0, j1 = max(0, -ox), min(w_out, width - ox)
                if i0 < i1 and j0 < j1:
                    y[:, :, i0:i1, j0:j1] += z[dy, dx, :, :, i0 + oy : i1 + oy, j0 + ox : j1 + ox]
        return y.transpose(0, 1).contiguous()

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h_out, w_out = self._out_size(x.shape[2], 0), self._out_size(x.shape[3], 1)
        cols = F.unfold(x, (self.kh, self.kw), dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (in·kh·kw, B·L)
        y = self.product(cols).view(self.out_channels, batch, h_out, w_out)
        return y.transpose(0, 1).contiguous()


def applicable_kernels(module: nn.Module, block_size: int = 1) -> List[str]:
    """The sparse kernels (KIND:BACKEND) that compute this module exactly (none for other layers or set-ups);
    `block_size` b > 1: the weights were trained in b x b tiles (sparse.block_size), so a Linear whose sides b
    divides may also take the block kernel."""
    if not fits(module):
        return []
    backends = BACKENDS if module.weight.device.type == "cpu" else ("torch",)
    if isinstance(module, nn.Linear):
        tiled = block_size > 1 and not any(d % block_size for d in matrix_shape(module.weight.shape))
        return [f"linear:{backend}" for backend in backends] + ([BLOCK] if tiled else [])
    stride, _, dilation = conv_geometry(module)
    kinds = (["taps"] if set(stride) | set(dilation) == {1} else []) + ["unfold"]
    return [f"{kind}:{backend}" for kind in kinds for backend in backends]


def sparse_module(module: nn.Module, kernel: str, block_size: int = 1) -> nn.Module:
    if kernel == BLOCK:
        return BlockLinear(module, block_size)
    kind, backend = kernel.split(":")
    return SparseLinear(module, backend) if kind == "linear" else SparseConv2d(module, kind, backend)


def layer_key(module: nn.Module, x: torch.Tensor, block_size: int = 1) -> str:
    w = module.weight
    geometry = "" if isinstance(module, nn.Linear) else f" {conv_geometry(module)}"
    blocks = f" blocks {block_size}" if BLOCK in applicable_kernels(module, block_size) else ""  # one more candidate
    return (
        f"{type(module).__name__}{geometry} {list(w.shape)} nnz {int((w != 0).sum())}{blocks} {w.dtype} "
        f"{w.device.type} x {list(x.shape)}"
    )


def candidate_layers(model: nn.Module, names: Optional[Iterable[str]] = None) -> Dict[str, nn.Module]:
    """{module name: module} of the layers a sparse kernel could replace: weight named in `names`
    (parameter names, e.g. the masks' keys) or, without names, holding exact zeros."""
    wanted = None if names is None else set(names)
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or not applicable_kernels(module):
            continue
        weight_name = f"{name}.weight" if name else "weight"
        if (weight_name in wanted) if wanted is not None else bool((module.weight == 0).any()):
            layers[name] = module
    return layers


@torch.no_grad()
def choose_and_swap(
    model: nn.Module,
    inputs: Dict[str, torch.Tensor],
    cache_dir=None,
    force: bool = False,
    kernels: Sequence[str] = KERNELS,
    margin: float = 1.05,
    repeats: int = 5,
    block_size: int = 1,
) -> List[LayerChoice]:
    """Swap each layer of `inputs` ({module name: its input}) for its fastest sparse kernel if that beats dense
    by `margin` (with `force`: for the first applicable one of `kernels`, untimed). A kernel KIND in `kernels`
    stands for KIND on every backend. `block_size`: the run's sparse.block_size (b > 1: the block kernel races)."""
    kernels = [k if ":" in k else f"{k}:{backend}" for k in kernels for backend in (BACKENDS if ":" not in k else "-")]

    def usable(module):
        return [k for k in kernels if k in applicable_kernels(module, block_size)]

    options = {name: usable(model.get_submodule(name)) for name in inputs}
    layers = {name: model.get_submodule(name) for name in inputs if options[name]}
    sync = device_sync()

    def measure(module, x):
        candidates = usable(module)
        sparse = [sparse_module(module, k, block_size) for k in candidates]
        times = best_of([lambda: module(x)] + [lambda m=m: m(x) for m in sparse], repeats, sync)
        fastest = min(range(len(candidates)), key=lambda i: times[i + 1])
        speedup = times[0] / times[fastest + 1]
        return (candidates[fastest] if speedup >= margin else None), speedup

    if force:
        decisions = {name: (options[name][0], None) for name in layers}
    else:
        decisions = choose_per_layer(
            layers,
            inputs,
            lambda module, x: layer_key(module, x, block_size),
            measure,
            DecisionCache(cache_dir, CACHE_FILE),
        )
    choices = []
    for name, (kernel, speedup) in decisions.items():
        module, x = layers[name], inputs[name]
        w = module.weight
        sparsity = float((w == 0).float().mean())
        choices.append(
            LayerChoice(name, type(module).__name__, list(w.shape), list(x.shape), sparsity, kernel, speedup)
        )
        if kernel is not None:
            replace_module(model, name, sparse_module(module, kernel, block_size))
    return choices


@torch.no_grad()
def use_sparse_kernels(
    model: nn.Module, run_example: Callable[[], object], names: Optional[Iterable[str]] = None, **options
) -> List[LayerChoice]:
    """Run `run_example` (one forward of `model` on the inputs it will see), then swap layers by measurement
    (options: cache_dir, force, kernels, margin, repeats, block_size of `choose_and_swap`). Returns one choice per
    layer."""
    return choose_and_swap(model, inputs_of(model, candidate_layers(model, names), run_example), **options)


class SparseKernelsOnFirstCall:
    """Hooks that let `model`'s first forward run dense while recording each layer's input, then swap layers
    by measurement (the same options as `use_sparse_kernels`). `choices` is filled after that first call.
    For callers that do not know the model's inputs in advance, e.g. a sampler."""

    def __init__(self, model: nn.Module, names: Optional[Iterable[str]] = None, **options):
        self.model, self.options = model, options
        self.choices: Optional[List[LayerChoice]] = None
        self.inputs, self.handles = capture_inputs(model, candidate_layers(model, names))
        self.handles.append(model.register_forward_hook(self._after_first_forward))

    def _after_first_forward(self, module, args, output):
        for handle in self.handles:
            handle.remove()
        self.choices = choose_and_swap(self.model, self.inputs, **self.options)
        self.inputs.clear()

    def swapped(self) -> List[str]:
        """Names of the layers that took a sparse kernel (empty before the first call)."""
        return [c.name for c in self.choices or [] if c.kernel is not None]

    def describe(self) -> str:
        return f"{len(self.swapped())} of {len(self.choices or [])} sparse layers took a sparse kernel"
