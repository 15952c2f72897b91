"""Does sparsity pay in training? Forward + backward of each masked layer, dense against sparse kernels, in one run.

    OMP_NUM_THREADS=1 python benchmarks/sparse_training.py [--models cpu-ldm ldm4-small chirodiff cpu-dit dit-s2]
        [--sparsities 0.5 0.9 0.95] [--repeats 5] [--rounds 5] [--no-model]
    OMP_NUM_THREADS=1 python benchmarks/sparse_training.py --cycle [--interval 10] [--cycles 2]
        [--distributions erk uniform] [--device cuda] [--block-sizes 1 32]

For every distinct masked Linear / Conv1d / Conv2d of each model (same kind, geometry, weight shape and input
shape counted once; `n` says how often it occurs) and each S (a uniform random mask with exactly (1 - S) of
the weights active), one forward and backward (input gradient, weight gradient, bias gradient) on the input the
layer sees in a training forward is timed, interleaved, best of `--repeats`, for:

    dense     the module with the masked weight, then its weight gradient masked (what training does today)
    torch     sparse_training layer, plan torch/torch/sampled: CSR products (MKL) and sampled_addmm for dW
    scipy     plan scipy/scipy/sampled: scipy's CSR (forward) and CSC (input gradient) products
    measured  the plan `measure_plan` picks (the fastest way of each product, or a sparseprop variant,
              or `module`, the masked module kept, where it wins), the benchmark's own choice
    sparseprop  IST-DASLab's kernels through benchmarks/sparseprop_kernels.py (pattern from the mask,
              contiguous inputs), both loop orders, the faster shown, if installed; '-' where it does not
              apply (Conv1d, non-square kernels, dilation), 'wrong' where no variant agrees with dense
              (checked on the layer's input before timing)

Printed are times / dense's time in the same rounds (below 1: faster), the measured plan, and, per product,
the best sparse way over the dense way (`parts`: fwd, dx, dw). The `share` column is the layer's part of the
model's masked-layer time (dense, times n). Each model then gets a summary: the masked layers' total time with
the measured plans over dense (n-weighted), and, unless --no-model, the whole model's forward + backward
(loss = mean square of the output) with `use_sparse_training_kernels` over the masked model, median of
`--rounds` interleaved rounds, with the largest gradient difference relative to the largest gradient.

`--cycle`: whole training steps instead, the engine's two storages side by side (sparsedm/sparse/storage/): for each S
and distribution (ERK, uniform), two copies of the model, each with fused Adam, an EMA and RigL-DM's engine
(ΔT = `--interval`, so one step in ΔT is an update step with the dense gradient), one masked
(`sparse.kernels=masked`), one compact with measured plans (`sparse.kernels=measure`); `--cycles` ΔT cycles,
their steps interleaved (the order swapped every step), each step timed on the CPU-time clock. Printed: a
cycle's time, measure / masked, for the whole cycle, its update step and its other steps, the same ratio for
a cycle of `--long-interval` steps (default 100, the paper's ΔT) computed from those measured times (one
update step and ΔT - 1 other steps at their measured mean), and the bytes held by parameters, gradients and
Adam's moments (the goal's quantity; compact layers' index tensors counted with the parameters), by the EMA,
and by the engine's masks and exploration record (the same in both modes), compact / masked. The last
column counts the layers measure mode made compact with a sparse plan, compact on their module's own operation, and
left masked (where the masked layer was faster).

Models as in benchmarks/sparse_inference.py: cpu-ldm (configs/ldm_openmoji_cpu.yaml's UNet, 3 x 8 x 8,
batch 64), ldm4-small (LDM-4's UNet on 3 x 16 x 16 latents, batch 4), chirodiff (its denoiser, 120 points,
batch 64; only its two Linear layers are masked Linear layers, the GRU is not timed here), cpu-dit
(configs/dit_openmoji_cpu.yaml's DiT, 3 x 8 x 8, batch 64) and dit-s2 (DiT-S/2 on 4 x 16 x 16 latents, batch 16).
For the DiTs, --cycle also times Small-Dense: the dense DiT narrowed (tasks/width.py) to the non-zero count of
each S and distribution, trained with the same fused Adam and EMA (its columns: time per cycle and
parameters + gradients + optimiser state, both over masked). `--tiny`: a smoke test in seconds.

`--cycle --block-sizes 1 32`: the DiTs get rows per block size b, named e.g. `dit-s2/b32`: for b > 1 both modes
train masks of b x b tiles (sparse.block_size; measure then races the `block` way too), the tensors the tiles do
not cover kept dense (sparse_inference.block_excludes), and no Small-Dense column. The default, 1, gives
the unstructured rows alone.
"""

import argparse
import copy
import dataclasses
import os
import statistics
import tempfile
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sparseprop_kernels  # noqa: E402
import torch  # noqa: E402
from sparse_inference import BATCHES, MODELS, Workload, block_excludes, block_sizes, small_dense_dit  # noqa: E402  (benchmarks/ is the script's folder)
from torch import nn  # noqa: E402
from training_kernels import (  # noqa: E402
    MODULE,
    candidate_training_layers,
    make_layer,
    measure_plan,
    sparse_train_module,
    use_sparse_training_kernels,
)

from sparsedm.sparse import EMA, SparseConfig, SparseEngine  # noqa: E402
from sparsedm.sparse.kernel_plan import WAYS  # noqa: E402
from sparsedm.sparse.kernels.compact_choice import compactable, fwd_bwd_call  # noqa: E402
from sparsedm.sparse.kernels.compact_layers import CompactConv, CompactLinear  # noqa: E402
from sparsedm.sparse.kernels.measure import best_of, capture_inputs, clock  # noqa: E402
from sparsedm.sparse.masks import random_mask  # noqa: E402
from sparsedm.train.state_bytes import training_state_bytes  # noqa: E402

SIDE_BY_SIDE = {"torch": ("torch", "torch", "sampled"), "scipy": ("scipy", "scipy", "sampled")}
NO_SYNC = lambda: None  # noqa: E731


def uniform_masks(model: nn.Module, sparsity: float, seed: int = 0):
    """{weight name: mask} for every Linear/Conv weight of the model, exactly (1 - S) of each active."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            w = module.weight
            masks[f"{name}.weight"] = random_mask(w.shape, max(1, round(w.numel() * (1 - sparsity))), g)
    return masks


def layer_inputs(work: Workload, masks):
    """{module name: input} of every masked layer, from one forward."""
    inputs, handles = capture_inputs(work.model, candidate_training_layers(work.model, masks))
    with torch.no_grad():
        work.call(work.model, 500)
    for handle in handles:
        handle.remove()
    return inputs


def distinct_layers(model, inputs):
    """[(description, name of the first, n)] of the layers that differ in kind, geometry, weight or input shape."""
    seen, first = Counter(), {}
    for name, x in inputs.items():
        m = model.get_submodule(name)
        geometry = "" if isinstance(m, nn.Linear) else f" s{m.stride[0]}"
        kernel = "" if isinstance(m, nn.Linear) else "x".join(map(str, m.kernel_size)) + " "
        desc = f"{type(m).__name__} {kernel}{'x'.join(map(str, m.weight.shape[:2]))}{geometry} in {list(x.shape)}"
        seen[desc] += 1
        first.setdefault(desc, name)
    return [(desc, first[desc], seen[desc]) for desc in first]


def layer_row(module, mask, x, repeats):
    """{column: ratio or text} for one layer at one S."""
    with torch.no_grad():
        module.weight.mul_(mask)
        dy = torch.randn(module(x).shape)
    x = x.detach().clone().requires_grad_(True)
    plan, _, parts = measure_plan(module, mask, x, repeats, NO_SYNC)
    calls = {"dense": fwd_bwd_call(module, x, dy, mask)}
    for label, side_plan in SIDE_BY_SIDE.items():
        calls[label] = fwd_bwd_call(sparse_train_module(module, mask, side_plan), x, dy, None)
    if plan != MODULE:
        calls["measured"] = fwd_bwd_call(make_layer(module, mask, plan), x, dy, None)
    wrong = []
    for variant in sparseprop_kernels.variants(module, x.shape[0]):
        layer = sparseprop_kernels.SparsepropLayer(module, mask, variant)
        if sparseprop_kernels.agrees(layer, module, mask, x, dy):
            calls[f"sparseprop:{variant}"] = fwd_bwd_call(layer, x, dy, None)
        else:
            wrong.append(variant)
    times = dict(zip(calls, best_of(list(calls.values()), repeats, NO_SYNC)))
    module.zero_grad(set_to_none=True)
    dense = times["dense"]
    row = {label: t / dense for label, t in times.items()}
    row.setdefault("measured", 1.0)  # all dense: the dense module itself
    sp = [row.pop(f"sparseprop:{v}") for v in sparseprop_kernels.VARIANTS if f"sparseprop:{v}" in row]
    row["sparseprop"] = f"{min(sp):.2f}" if sp else ("wrong" if wrong else "-")
    row["plan"] = plan
    row["parts"] = " ".join(
        f"{part} {min(t[1:]) / t[0]:.2f}({WAYS[part][1 + t[1:].index(min(t[1:]))]})" for part, t in parts.items()
    )
    row["dense_s"] = dense
    return row


def model_ratio(work, masks, rounds, cache_dir):
    """(whole model fwd + bwd with measured plans / masked model, largest grad difference, layers swapped)."""
    masked = work.model
    with torch.no_grad():
        for name, p in masked.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    sparse = copy.deepcopy(masked)
    choices = use_sparse_training_kernels(sparse, lambda: work.call(sparse, 500), masks, cache_dir=cache_dir, repeats=3)
    swapped = {f"{c.name}.weight" for c in choices if c.plan != MODULE}

    def step(model, mask_these):
        def run():
            for p in model.parameters():
                p.grad = None
            work.call(model, 500).square().mean().backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in mask_these and p.grad is not None:
                        p.grad.mul_(mask_these[name])

        return run

    runs = {
        "masked": step(masked, masks),
        "sparse": step(sparse, {k: v for k, v in masks.items() if k not in swapped}),
    }
    times = {k: [] for k in runs}
    now = clock()
    for run in runs.values():  # warm-up
        run()
    for i in range(rounds):
        for key, run in list(runs.items())[:: 1 if i % 2 == 0 else -1]:  # ABBA: neither always goes first
            start = now()
            run()
            times[key].append(now() - start)
    grads = {n: p.grad for n, p in masked.named_parameters() if p.grad is not None}
    largest = max(float(g.abs().max()) for g in grads.values())
    error = max(float((p.grad - grads[n]).abs().max()) for n, p in sparse.named_parameters() if n in grads)
    ratio = statistics.median(times["sparse"]) / statistics.median(times["masked"])
    return ratio, error / largest, f"{len(swapped)}/{len(choices)}"


def training_setup(
    work: Workload, sparsity: float, distribution: str, interval: int, kernels: str, cache_dir, block: int = 1
):
    """(model, optimizer, ema, engine) of one mode, the same weights and masks for both."""
    model = copy.deepcopy(work.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    ema = EMA(model, decay=0.999)
    config = SparseConfig(
        method="rigl",
        sparsity=sparsity,
        distribution=distribution,
        update_interval=interval,
        t_end=10**9,
        block_size=block,
        exclude=block_excludes(model, block),
    )
    engine = SparseEngine(model, optimizer, config, total_steps=10**9, ema=ema)
    plan = dataclasses.replace(config, kernels=kernels).kernel_plan
    if plan.compact:
        engine.compact(plan, lambda: work.call(model, 500), cache_dir=cache_dir)
    return model, optimizer, ema, engine


def small_dense_setup(work: Workload, sparsity: float, distribution: str):
    """(setup, width) of Small-Dense for a DiT workload: its DiT narrowed to the non-zero count of RigL-DM at S
    (tasks/width.py), dense, with the same fused Adam and EMA as the other two."""
    model, width = small_dense_dit(work, sparsity, distribution)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    ema = EMA(model, decay=0.999)
    engine = SparseEngine(model, optimizer, SparseConfig(method="dense"), total_steps=10**9, ema=ema)
    return (model, optimizer, ema, engine), width


def parameters_gradients_moments(memory: dict) -> int:
    """The goal's quantity from a `training_state_bytes` record."""
    return memory["parameters"] + memory["gradients"] + memory["optimizer"]


def training_step(work: Workload, setup) -> None:
    model, optimizer, ema, engine = setup
    optimizer.zero_grad(set_to_none=True)
    work.call(model, 500).square().mean().backward()
    engine.after_backward()
    optimizer.step()
    engine.after_optimizer_step()
    ema.update(model)


def cycle_row(
    work: Workload, sparsity: float, distribution: str, interval: int, cycles: int, cache_dir, block: int = 1
) -> dict:
    """Time of `cycles` ΔT cycles per mode (update steps apart), interleaved, and the bytes each mode holds."""
    setups = {
        mode: training_setup(work, sparsity, distribution, interval, mode, cache_dir, block)
        for mode in ("masked", "measure")
    }
    width = None
    if work.dit and block == 1:  # Small-Dense takes its turns with the other two
        setups["small"], width = small_dense_setup(work, sparsity, distribution)
    layers = [m for m in setups["measure"][0].modules() if isinstance(m, (CompactLinear, CompactConv))]
    sparse_plans = sum(not layer.plan.module_op for layer in layers)
    candidates = len(compactable(setups["masked"][0], setups["masked"][3].masks))
    now = clock()
    sync = torch.cuda.synchronize if work.x.device.type == "cuda" else NO_SYNC
    times = {mode: {"update": 0.0, "other": 0.0} for mode in setups}
    for mode in setups:  # warm-up: one step each (the first backward allocates)
        training_step(work, setups[mode])
    for i in range(cycles * interval):
        kind = "update" if setups["masked"][3].schedule.is_update_step(setups["masked"][3].step + 1) else "other"
        for mode in list(setups)[:: 1 if i % 2 == 0 else -1]:
            sync()
            start = now()
            training_step(work, setups[mode])
            sync()
            times[mode][kind] += now() - start
    masks = {mode: setups[mode][3].masks for mode in ("masked", "measure")}
    moved = sum(int((masks["masked"][n] != masks["measure"][n]).sum()) for n in masks["masked"])
    memory = {mode: training_state_bytes(*setups[mode]) for mode in setups}
    small = None
    if width is not None:
        masked_time = sum(times["masked"].values())
        small = {
            "width": width,
            "cycle": sum(times.pop("small").values()) / masked_time,
            "pgo": parameters_gradients_moments(memory.pop("small")) / parameters_gradients_moments(memory["masked"]),
        }
    return {
        "times": times,
        "memory": memory,
        "small": small,
        "layers": f"{sparse_plans}/{len(layers) - sparse_plans}/{candidates - len(layers)}",
        "density": 1 - setups["masked"][3].sparsity(),
        "masks_differ": moved,  # positions where the two modes' masks differ at the end (rounding at ties)
    }


def print_cycles(args, batches) -> None:
    print(
        f"RigL-DM, ΔT = {args.interval}, {args.cycles} cycle(s) after one warm-up step; time ratios measure / masked "
        "(below 1 is faster); bytes compact / masked"
    )
    print(
        f"{'model':<11} {'S':>5} {'dist':<8} {'cycle':>6} {'update':>7} {'other':>6} "
        f"{f'ΔT={args.long_interval}':>7} {'masked s/cycle':>14} "
        f"{'p+g+opt':>8} {'ema':>6} {'engine':>7} {'p+g+opt MiB masked':>18}  layers sparse/dense/masked"
    )
    for name in args.models:
        work = Workload(name, batches[name], args.tiny)
        work.model.to(args.device)
        work.x = work.x.to(args.device)
        work.mask = None if work.mask is None else work.mask.to(args.device)
        for (block, label), sparsity, distribution in (
            (b, s, d) for b in block_sizes(work, args.block_sizes) for s in args.sparsities for d in args.distributions
        ):
            with tempfile.TemporaryDirectory() as tmp:
                row = cycle_row(work, sparsity, distribution, args.interval, args.cycles, tmp, block)
            t, mem = row["times"], row["memory"]
            total = {mode: sum(parts.values()) for mode, parts in t.items()}
            pgo = {mode: parameters_gradients_moments(m) for mode, m in mem.items()}
            other = t["measure"]["other"] / t["masked"]["other"] if t["masked"]["other"] else float("nan")
            per_other = args.cycles * (args.interval - 1)
            long = {
                mode: t[mode]["update"] / args.cycles + (args.long_interval - 1) * t[mode]["other"] / per_other
                for mode in t
            }
            print(
                f"{label:<11} {sparsity:>5.2f} {distribution:<8} {total['measure'] / total['masked']:>6.3f} "
                f"{t['measure']['update'] / t['masked']['update']:>7.3f} {other:>6.3f} "
                f"{long['measure'] / long['masked']:>7.3f} "
                f"{total['masked'] / args.cycles:>14.2f} {pgo['measure'] / pgo['masked']:>8.3f} "
                f"{mem['measure']['ema'] / mem['masked']['ema']:>6.3f} "
                f"{mem['measure']['masks'] / mem['masked']['masks']:>7.3f} {pgo['masked'] / 2**20:>18.1f}  "
                f"{row['layers']}"
                + (f" (masks differ at {row['masks_differ']} positions)" if row["masks_differ"] else "")
                + (
                    f"  small-dense hidden {small['width']}: cycle {small['cycle']:.3f}, p+g+opt {small['pgo']:.3f}"
                    if (small := row["small"])
                    else ""
                ),
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.9, 0.95])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved calls per layer; the best is kept")
    parser.add_argument("--rounds", type=int, default=5, help="whole-model turns; medians are compared")
    parser.add_argument("--batch", type=int, nargs="+", default=BATCHES, help="batch per model (in order)")
    parser.add_argument("--no-model", action="store_true", help="per-layer table only")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of the script")
    parser.add_argument("--cycle", action="store_true", help="whole training steps over ΔT cycles, and memory")
    parser.add_argument("--interval", type=int, default=10, help="--cycle: ΔT")
    parser.add_argument("--cycles", type=int, default=2, help="--cycle: ΔT cycles timed")
    parser.add_argument("--device", default="cpu", help="--cycle: cpu or cuda (cuSPARSE CSR and sampled_addmm)")
    parser.add_argument("--long-interval", type=int, default=100, help="--cycle: the ΔT of the computed column")
    parser.add_argument("--distributions", nargs="+", default=["erk", "uniform"], help="--cycle: distributions")
    parser.add_argument("--block-sizes", nargs="+", type=int, default=[1], help="--cycle, DiTs: rows per block size")
    args = parser.parse_args()
    if args.block_sizes != [1] and not args.cycle:
        parser.error("--block-sizes needs --cycle: the per-layer table times unstructured masks")
    batches = dict(zip(MODELS, args.batch + args.batch[-1:] * len(MODELS)))
    torch.set_grad_enabled(True)
    print(
        f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f} at start, torch "
        f"{torch.__version__}, sparseprop {'installed' if sparseprop_kernels.AVAILABLE else 'not installed'}"
    )
    if args.cycle:
        print_cycles(args, batches)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return
    print("ratios: time / dense masked layer's time in the same rounds (forward + backward); below 1 is faster")
    header = f"{'layer':<52} {'n':>3} {'S':>5} {'share':>6} {'torch':>6} {'scipy':>6} {'sparseprop':>10} "
    print(header + f"{'measured':>8}  {'plan':<28} parts: best sparse / dense")
    for name in args.models:
        work = Workload(name, batches[name], args.tiny)
        work.model.train()
        layers = distinct_layers(work.model, layer_inputs(work, uniform_masks(work.model, 0.5)))
        for sparsity in args.sparsities:
            masks = uniform_masks(work.model, sparsity)
            inputs = layer_inputs(work, masks)
            rows = []
            for desc, layer_name, n in layers:
                module = copy.deepcopy(work.model.get_submodule(layer_name))
                row = layer_row(module, masks[f"{layer_name}.weight"], inputs[layer_name], args.repeats)
                rows.append((desc, n, row))
            total = sum(n * row["dense_s"] for _, n, row in rows)
            for desc, n, row in rows:
                print(
                    f"{desc:<52} {n:>3} {sparsity:>5.2f} {n * row['dense_s'] / total:>6.1%} {row['torch']:>6.2f} "
                    f"{row['scipy']:>6.2f} {row['sparseprop']:>10} {row['measured']:>8.2f}  {row['plan']:<28} "
                    f"{row['parts']}",
                    flush=True,
                )
            measured = sum(n * row["dense_s"] * row["measured"] for _, n, row in rows) / total
            summary = f"{name} S = {sparsity}: masked layers, measured plans / dense {measured:.3f}"
            if not args.no_model:
                with tempfile.TemporaryDirectory() as tmp:
                    ratio, error, swapped = model_ratio(
                        Workload(name, batches[name], args.tiny), masks, args.rounds, tmp
                    )
                summary += (
                    f"; whole model fwd+bwd, measured / masked {ratio:.3f} ({swapped} layers sparse, "
                    f"gradient difference {error:.1e} of the largest)"
                )
            print(summary, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
