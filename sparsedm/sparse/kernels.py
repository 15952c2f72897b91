"""Sparse inference kernels, chosen per layer by measurement: a masked model that samples faster than dense.

    choices = use_sparse_kernels(model, lambda: model(x, t), names=masks.keys(), cache_dir="data/cache/kernels")

Every Linear, Conv1d and Conv2d whose weight is sparse (in `names`, or holding exact zeros) is timed on the
input it sees in one example forward: the dense module against each sparse kernel that fits it, interleaved,
the best of `repeats`. It is swapped only where a sparse kernel beats dense by `margin`. The kernels multiply a
CSR copy of the weight (torch's sparse matrix product, MKL on CPU) with a dense matrix:

    linear   y = W x + b                          W: (out, in) CSR
    taps     Z = W_taps X, y = Σ_(dy,dx) shift(Z)  W_taps: (kh·kw·out, in) CSR, X the input as (in, B·H·W);
             a kh x kw convolution as kh·kw 1 x 1 ones whose outputs are added shifted (stride 1)
    unfold   y = W cols                           W: (out, in·kh·kw) CSR, cols = im2col(x) (any stride)

Decisions are cached in `cache_dir`/sparse_kernels.json, keyed by machine (CPU model, threads, torch) and by
layer (kind, weight shape, non-zeros, input shape), so a second conversion of the same model times nothing.
Outputs equal the dense masked module's to fp32 rounding (sums in another order). Inference only: the sparse
modules hold detached copies of the weights.
"""

import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.errors import UserError

CACHE_FILE = "sparse_kernels.json"
KERNELS = ("linear", "taps", "unfold")  # every sparse kernel; `kernels=` restricts them


@dataclass
class LayerChoice:
    name: str  # module name in the model
    kind: str  # Linear | Conv1d | Conv2d
    weight_shape: List[int]
    input_shape: List[int]
    sparsity: float  # fraction of exact zeros in the weight
    kernel: str  # "dense" or the sparse kernel that replaced it
    speedup: Optional[float]  # dense time / best sparse time; None when forced (not timed)


def to_csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return matrix.contiguous().to_sparse_csr()


class SparseLinear(nn.Module):
    """y = W x + b with W in CSR; x of shape (..., in)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_csr = to_csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).t()  # (in, N): the product reads X column-major, no copy
        y = self.weight_csr @ rows if self.bias is None else torch.addmm(self.bias[:, None], self.weight_csr, rows)
        return y.t().reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """A groups=1, zero-padded Conv2d (or a Conv1d seen as 1 x k) with a CSR weight, by `taps` or `unfold`."""

    def __init__(self, conv: nn.Module, kernel: str):
        super().__init__()
        self.one_d = isinstance(conv, nn.Conv1d)
        weight = conv.weight.detach()
        if self.one_d:
            weight = weight[:, :, None, :]
        self.out_channels, self.in_channels, self.kh, self.kw = weight.shape
        self.stride, self.padding, self.dilation = _conv_geometry(conv)
        self.kernel = kernel
        if kernel == "taps":  # rows (dy, dx, out): one 1 x 1 convolution per tap
            self.weight_csr = to_csr(weight.permute(2, 3, 0, 1).reshape(-1, self.in_channels))
        else:
            self.weight_csr = to_csr(weight.reshape(self.out_channels, -1))
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
        batch, channels, height, width = x.shape
        h_out, w_out = self._out_size(height, 0), self._out_size(width, 1)
        z = (self.weight_csr @ x.transpose(0, 1).reshape(channels, -1)).view(
            self.kh, self.kw, self.out_channels, batch, height, width
        )
        y = x.new_zeros(batch, self.out_channels, h_out, w_out)
        y_obhw = y.transpose(0, 1)  # write in z's (out, B) order into y's (B, out) memory
        for dy in range(self.kh):
            oy = dy - self.padding[0]  # output row i reads input row i + oy
            i0, i1 = max(0, -oy), min(h_out, height - oy)
            for dx in range(self.kw):
                ox = dx - self.padding[1]
                j0, j1 = max(0, -ox), min(w_out, width - ox)
                if i0 < i1 and j0 < j1:
                    y_obhw[:, :, i0:i1, j0:j1] += z[dy, dx, :, :, i0 + oy : i1 + oy, j0 + ox : j1 + ox]
        return y

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h_out, w_out = self._out_size(x.shape[2], 0), self._out_size(x.shape[3], 1)
        cols = F.unfold(x, (self.kh, self.kw), dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (in·kh·kw, B·L)
        y = (self.weight_csr @ cols).view(self.out_channels, batch, h_out, w_out)
        return y.transpose(0, 1).contiguous()


def _conv_geometry(conv: nn.Module):
    """(stride, padding, dilation) as 2-tuples, string padding resolved; a Conv1d is a 1 x k Conv2d."""
    padding = conv.padding
    if padding == "valid":
        padding = (0,) * len(conv.kernel_size)
    elif padding == "same":
        padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    if isinstance(conv, nn.Conv1d):
        return (1,) + tuple(conv.stride), (0,) + tuple(padding), (1,) + tuple(conv.dilation)
    return tuple(conv.stride), tuple(padding), tuple(conv.dilation)


def applicable_kernels(module: nn.Module) -> List[str]:
    """The sparse kernels that compute this module exactly (none for other layer types or set-ups)."""
    if module.weight.dtype not in (torch.float32, torch.float64) or module.weight.is_sparse:
        return []
    if isinstance(module, nn.Linear):
        return ["linear"]
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or module.groups != 1 or module.padding_mode != "zeros":
        return []
    if module.padding == "same" and any(k % 2 == 0 for k in module.kernel_size):
        return []  # torch pads such a kernel asymmetrically
    stride, _, dilation = _conv_geometry(module)
    return (["taps"] if set(stride) | set(dilation) == {1} else []) + ["unfold"]


def sparse_module(module: nn.Module, kernel: str) -> nn.Module:
    return SparseLinear(module) if kernel == "linear" else SparseConv2d(module, kernel)


def machine_key() -> str:
    """What a timing depends on besides the layer: CPU model, threads, torch build, device."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda"
    return f"{cpu} | {torch.get_num_threads()} threads | torch {torch.__version__} | {gpu}"


def layer_key(module: nn.Module, x: torch.Tensor) -> str:
    w = module.weight
    geometry = "" if isinstance(module, nn.Linear) else f" {_conv_geometry(module)}"
    return (
        f"{type(module).__name__}{geometry} {list(w.shape)} nnz {int((w != 0).sum())} {w.dtype} {w.device.type}"
        f" x {list(x.shape)}"
    )


class DecisionCache:
    """{machine: {layer: [kernel, speedup]}} in one JSON file; `None` for no cache."""

    def __init__(self, cache_dir):
        self.path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE
        self.machine = machine_key()
        self.entries = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text()).get(self.machine, {})
            except (json.JSONDecodeError, AttributeError):
                raise UserError(f"{self.path} is not a sparse-kernel cache; delete it and it is measured again")

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, kernel: str, speedup: float) -> None:
        self.entries[key] = [kernel, speedup]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        everything = json.loads(self.path.read_text()) if self.path.is_file() else {}
        everything[self.machine] = self.entries
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(everything, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def best_of(fns: Sequence[Callable[[], object]], repeats: int, sync: Callable[[], None]) -> List[float]:
    """Seconds of each function, the best of `repeats` interleaved calls after one warm-up each."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def choose_and_swap(
    model: nn.Module,
    inputs: Dict[str, torch.Tensor],
    cache_dir=None,
    force: bool = False,
    kernels: Sequence[str] = KERNELS,
    margin: float = 1.05,
    repeats: int = 5,
) -> List[LayerChoice]:
    """Swap each layer of `inputs` ({module name: its input}) for its fastest sparse kernel if that beats dense
    by `margin` (with `force`: for the first applicable one of `kernels`, untimed)."""
    cache = DecisionCache(cache_dir)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    choices = []
    for name, x in inputs.items():
        module = model.get_submodule(name)
        options = [k for k in kernels if k in applicable_kernels(module)]
        if not options:
            continue
        key = layer_key(module, x)
        if force:
            kernel, speedup = options[0], None
        elif cache.get(key) is not None:
            kernel, speedup = cache.get(key)
        else:
            sparse = {k: sparse_module(module, k) for k in options}
            times = best_of([lambda: module(x)] + [lambda m=m: m(x) for m in sparse.values()], repeats, sync)
            fastest = min(range(len(options)), key=lambda i: times[i + 1])
            speedup = times[0] / times[fastest + 1]
            kernel = options[fastest] if speedup >= margin else "dense"
            cache.put(key, kernel, speedup)
        w = module.weight
        choices.append(
            LayerChoice(
                name,
                type(module).__name__,
                list(w.shape),
                list(x.shape),
                float((w == 0).float().mean()),
                kernel,
                speedup,
            )
        )
        if kernel != "dense":
            _replace(model, name, sparse_module(module, kernel))
    cache.save()
    return choices


def capture_inputs(model: nn.Module, layers: Dict[str, nn.Module]):
    """Forward pre-hooks recording each layer's first input of the next forward; returns (inputs, handles)."""
    inputs: Dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            inputs.setdefault(name, args[0].detach())

        return record

    return inputs, [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]


@torch.no_grad()
def use_sparse_kernels(
    model: nn.Module, run_example: Callable[[], object], names: Optional[Iterable[str]] = None, **options
) -> List[LayerChoice]:
    """Run `run_example` (one forward of `model` on the inputs it will see), then swap layers by measurement
    (options: cache_dir, force, kernels, margin, repeats of `choose_and_swap`). Returns one choice per layer."""
    inputs, handles = capture_inputs(model, candidate_layers(model, names))
    try:
        run_example()
    finally:
        for handle in handles:
            handle.remove()
    return choose_and_swap(model, inputs, **options)


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
        return [c.name for c in self.choices or [] if c.kernel != "dense"]

    def describe(self) -> str:
        return f"{len(self.swapped())} of {len(self.choices or [])} sparse layers took a sparse kernel"


def format_choices(choices: List[LayerChoice]) -> str:
    """One line per layer: name, shapes, sparsity, chosen kernel, measured speed-up."""
    lines = []
    for c in choices:
        speed = "forced" if c.speedup is None else f"{c.speedup:.2f}x"
        lines.append(f"{c.name:<48} {c.kind:<7} S={c.sparsity:.2f} x{c.input_shape} -> {c.kernel:<6} ({speed})")
    return "\n".join(lines)


def choices_as_dicts(choices: List[LayerChoice]) -> List[dict]:
    return [asdict(c) for c in choices]
