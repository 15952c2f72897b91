"""The one measure-choose-cache mechanism of the kernels: per layer, time the candidates on the input the layer
sees, interleaved, best of `repeats`; keep the fastest; cache the decision by machine and layer.

    choices = choose_per_layer(layers, inputs, key, measure, DecisionCache(cache_dir, "sampling_kernels.json"))

Sampling (sampling.py) and compact training (compact_choice.py) differ only in their candidates, that is in
`key` and `measure`. A decision is [choice, speed-up] in `cache_dir`/FILE, keyed by machine (CPU model,
threads, torch, GPU) and by the caller's layer key, so a second run on the same machine times nothing.
"""

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsedm.errors import UserError

Decision = Tuple[Optional[str], Optional[float]]  # (choice, speed-up over the layer as it is; None: not timed)


def machine_key() -> str:
    """What a timing depends on besides the layer: CPU model, threads, torch build, device."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda"
    return f"{cpu} | {torch.get_num_threads()} threads | torch {torch.__version__} | {gpu}"


class DecisionCache:
    """{machine: {layer: [choice, speedup]}} in one JSON file; `cache_dir` None for no cache."""

    def __init__(self, cache_dir, file: str):
        self.path = None if cache_dir is None else Path(cache_dir) / file
        self.machine = machine_key()
        self.entries = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text()).get(self.machine, {})
            except (json.JSONDecodeError, AttributeError):
                raise UserError(f"{self.path} is not a kernel decision cache; delete it and it is measured again")

    def get(self, key: str) -> Optional[Decision]:
        entry = self.entries.get(key)
        return None if entry is None else tuple(entry)

    def put(self, key: str, choice: Optional[str], speedup: Optional[float]) -> None:
        self.entries[key] = [choice, speedup]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        everything = json.loads(self.path.read_text()) if self.path.is_file() else {}
        everything[self.machine] = self.entries
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(everything, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def clock() -> Callable[[], float]:
    """The clock to compare kernels by: with one CPU thread the process's CPU time, which other jobs on a
    shared machine hardly disturb; with several threads (CPU time would count each) or a GPU the wall clock."""
    single_cpu_thread = torch.get_num_threads() == 1 and not torch.cuda.is_available()
    return time.process_time if single_cpu_thread else time.perf_counter


def device_sync() -> Callable[[], None]:
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def best_of(fns: Sequence[Callable[[], object]], repeats: int, sync: Callable[[], None]) -> List[float]:
    """Seconds of each function, the best of `repeats` interleaved calls after one warm-up each."""
    for fn in fns:
        fn()
    now, best = clock(), [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            start = now()
            fn()
            sync()
            best[i] = min(best[i], now() - start)
    return best


def capture_inputs(model: nn.Module, layers: Dict[str, nn.Module]):
    """Forward pre-hooks recording each layer's first input of the next forward; returns (inputs, handles)."""
    inputs: Dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            inputs.setdefault(name, args[0].detach())

        return record

    return inputs, [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]


def inputs_of(
    model: nn.Module, layers: Dict[str, nn.Module], run_example: Callable[[], object]
) -> Dict[str, torch.Tensor]:
    """{name: first input} of each of `layers` in one run of `run_example` (a forward of `model`, no gradients)."""
    inputs, handles = capture_inputs(model, layers)
    try:
        with torch.no_grad():
            run_example()
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in the place of `model`'s submodule `name`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def choose_per_layer(
    layers: Dict[str, nn.Module],
    inputs: Dict[str, torch.Tensor],
    key: Callable[[nn.Module, torch.Tensor], str],
    measure: Callable[[nn.Module, torch.Tensor], Decision],
    cache: DecisionCache,
) -> Dict[str, Decision]:
    """{name: (choice, speed-up)} of each layer that saw an input: cached, else measured (and cached)."""
    decisions = {}
    for name, module in layers.items():
        x = inputs.get(name)
        if x is None:  # not used by the example forward: nothing to measure on, nothing to gain
            continue
        layer_key = key(module, x)
        if cache.get(layer_key) is None:
            cache.put(layer_key, *measure(module, x))
        decisions[name] = cache.get(layer_key)
    cache.save()
    return decisions
