"""Cost of the sparse engine on a training step, relative to dense training of the same model.

    python benchmarks/engine_overhead.py [--cycles 2] [--interval 100] [--batch 32] [--device cpu] [--no-fused]

Four copies of one UNet2DModel train side by side: dense, then static, magran and rigl at S = 0.5, over
`cycles` full ΔT cycles, mask updates included (t_end lies past the timed steps, so every timed update
replaces weights). The methods take turns in blocks of `--block` steps, so a busy machine slows them alike
and the ratios stay fair. Printed: time per step / dense's; one mask update on its own (at t = ΔT, p_t ≈ p)
/ one step; memory / dense's (CUDA: peak allocated during the method's own steps; CPU: bytes held by
parameters, gradients, optimiser state, EMA and masks). AdamW is fused, as in `sparsedm train`;
`--no-fused` shows torch's per-tensor AdamW, whose CPU sqrt is slow on the zeros that masked weights keep
in Adam's second moment. Masks simulate sparsity: no speed-up is expected, only the cost of keeping them;
the savings are in FLOPs and non-zero parameters.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

from sparsedm.sparse import EMA, SparseConfig, SparseEngine  # noqa: E402

METHODS = ("dense", "static", "magran", "rigl")


class Run:
    def __init__(self, method, steps, interval, device, batch, fused):
        torch.manual_seed(0)
        self.model = UNet2DModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(64, 128),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        ).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused)
        self.ema = EMA(self.model)
        config = SparseConfig(method=method, sparsity=0.5, update_interval=interval, t_end=1.0, prune_rate=0.3)
        # t_end past the timed steps: every timed update replaces weights (cosine p_t from p down to ~p/2);
        # with t_end at the last timed step, that last update would have p_t = 0 and cost nothing
        self.engine = SparseEngine(self.model, self.optimizer, config, total_steps=2 * steps, ema=self.ema)
        self.x = torch.randn(batch, 4, 16, 16, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.step_time, self.steps, self.peak = 0.0, 0, 0

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.x, self.t).sample.pow(2).mean().backward()
        self.engine.after_backward()
        self.optimizer.step()
        update = self.engine.after_optimizer_step()
        self.ema.update(self.model)
        return update

    def state_bytes(self):
        model = self.model
        tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        tensors += list(self.ema.module.parameters()) + list(self.engine.masks.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2, help="ΔT cycles timed per method")
    parser.add_argument("--interval", type=int, default=100, help="ΔT")
    parser.add_argument("--block", type=int, default=10, help="steps a method runs before the next takes its turn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-fused",
        dest="fused",
        action="store_false",
        help="per-tensor AdamW, torch's default on CPU (slow on the zeros of masked weights)",
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps = args.cycles * args.interval
    runs = {m: Run(m, steps, args.interval, args.device, args.batch, args.fused) for m in METHODS}
    for run in runs.values():  # warm-up, then restart the schedule so every update is timed
        for _ in range(3):
            run.step()
        run.engine.step = 0

    while any(r.steps < steps for r in runs.values()):
        for run in runs.values():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(min(args.block, steps - run.steps)):
                sync()
                t0 = time.perf_counter()
                run.step()
                sync()
                run.step_time += time.perf_counter() - t0
                run.steps += 1
            run.peak = max(run.peak, torch.cuda.max_memory_allocated() if cuda else run.state_bytes())
        done = min(r.steps for r in runs.values())
        print(f"\r{done}/{steps} steps per method", end="", flush=True)
    print()

    update_only = {}
    for method, run in runs.items():  # one mask update on its own, at t = ΔT (p_t ≈ p): the update step's
        if run.engine.schedule is None:  # after_optimizer_step, its backward and optimiser step untimed
            continue
        run.engine.step = args.interval - 1
        run.optimizer.zero_grad(set_to_none=True)
        run.model(run.x, run.t).sample.pow(2).mean().backward()
        run.engine.after_backward()  # RigL: the dense gradient of the update step
        run.optimizer.step()
        sync()
        t0 = time.perf_counter()
        stats = run.engine.after_optimizer_step()
        sync()
        update_only[method] = time.perf_counter() - t0
        assert stats["replaced"] > 0, "the timed update must replace weights"

    dense = runs["dense"]
    dense_step = dense.step_time / dense.steps
    print(
        f"method   ms/step  step/dense  update/step  memory/dense   (S = 0.5, ΔT = {args.interval}, {args.cycles} cycles, {args.device}, AdamW {'fused' if args.fused else 'per-tensor'})"
    )
    for method, run in runs.items():
        per_step = run.step_time / run.steps
        update = f"{update_only[method] / per_step:.3f}" if method in update_only else "-"
        print(
            f"{method:>7}  {per_step * 1000:7.1f}  {per_step / dense_step:10.3f}  {update:>11}  {run.peak / dense.peak:12.3f}"
        )
    print("masks simulate sparsity: dense kernels do the same work, so no speed-up is expected")


if __name__ == "__main__":
    main()
