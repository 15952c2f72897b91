"""Cost of the sparse engine on a training step, relative to dense training of the same model.

    python benchmarks/engine_overhead.py [--cycles 2] [--interval 100] [--device cpu]

Each method runs in its own process (dense, then static, magran and rigl at S = 0.5) for `cycles` full ΔT
cycles, mask updates included. Printed: time per step / dense's, one mask update / one step, and peak memory
/ dense's (CUDA: max allocated; CPU: bytes held by parameters, gradients, optimiser state, EMA and masks,
plus the process's peak RSS). Masks simulate sparsity: no speed-up is expected from them, only the cost of
keeping them; the savings are in FLOPs and non-zero parameters.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(device):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).to(device)
    return model


def state_bytes(model, optimizer, ema, engine):
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for s in optimizer.state.values() for t in s.values() if hasattr(t, "numel")]
    tensors += list(ema.module.parameters()) + list(engine.masks.values())
    return sum(t.numel() * t.element_size() for t in tensors)


def run_one(method, cycles, interval, device, batch):
    import torch

    from sparsedm.sparse import EMA, SparseConfig, SparseEngine

    model = build(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(model)
    steps = cycles * interval
    config = SparseConfig(method=method, sparsity=0.5, update_interval=interval, t_end=1.0, prune_rate=0.3)
    engine = SparseEngine(model, optimizer, config, total_steps=steps + 10, ema=ema)
    x = torch.randn(batch, 4, 16, 16, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x, t).sample.pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        update = engine.after_optimizer_step()
        ema.update(model)
        return update

    update_times = []
    for _ in range(5):  # warm-up (not an update step: the schedule starts at ΔT)
        step()
    engine.step = 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        update = step()
        sync()
        if update is not None:
            update_times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start

    # one mask update on its own: the drop/grow of every tensor, after a normal step
    update_only = None
    if engine.schedule is not None:
        step()
        engine._dense_grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in engine.params.items()}
        sync()
        t0 = time.perf_counter()
        engine._update_masks(interval)
        sync()
        update_only = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else state_bytes(model, optimizer, ema, engine)
    return {"method": method, "step_s": elapsed / steps, "update_only_s": update_only, "updates": len(update_times),
            "peak_bytes": peak, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2, help="ΔT cycles timed per method")
    parser.add_argument("--interval", type=int, default=100, help="ΔT")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.cycles, args.interval, args.device, args.batch)))
        return

    results = {}
    for method in ("dense", "static", "magran", "rigl"):
        cmd = [sys.executable, __file__, "--child", method, "--cycles", str(args.cycles), "--interval", str(args.interval),
               "--device", args.device, "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:>7}: {r['step_s'] * 1000:7.1f} ms/step over {args.cycles} x ΔT={args.interval} ({r['updates']} updates)", flush=True)

    dense = results["dense"]
    print(f"\nmethod   step/dense  update/step  memory/dense  (S = 0.5, device {args.device}; masks simulate sparsity, no speed-up expected)")
    for method, r in results.items():
        update = f"{r['update_only_s'] / r['step_s']:.3f}" if r["update_only_s"] is not None else "-"
        print(f"{method:>7}  {r['step_s'] / dense['step_s']:10.3f}  {update:>11}  {r['peak_bytes'] / dense['peak_bytes']:12.3f}")


if __name__ == "__main__":
    main()
