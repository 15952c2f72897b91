"""Does sparsity pay at sampling time? Dense, masked and sparse-kernel denoisers, timed in one interleaved run.

    OMP_NUM_THREADS=1 python benchmarks/sparse_inference.py [--models cpu-ldm ldm4-small chirodiff cpu-dit dit-s2]
        [--sparsities 0.5 0.75 0.9 0.95] [--distributions erk uniform] [--steps 4] [--rounds 5] [--block-sizes 1 32]

For each model, distribution and S: the dense model, its masked copy (a static engine's masks, the weights
at masked positions exactly zero) and that copy converted by `use_sparse_kernels` (each sparse layer timed
dense vs sparse kernels on its real input, swapped where the sparse one is faster). One sampling run is
`--steps` denoiser calls on a batch at decreasing t (the scheduler's arithmetic, the same for all, is left
out). The three take turns for `--rounds` rounds, so a busy machine slows them alike; printed are the median
times per image as ratios to the dense model's in the same rounds, how many sparse layers took a sparse
kernel, the largest difference of the sparse model's output from the masked one's (relative to its largest
entry, one call at t = 500), and the compressed weights' bytes / dense fp32 bytes. Then one GRU layer of the ChiroDiff shape,
dense (torch's fused kernel) against a step loop with CSR weights, which is why GRU weights stay dense.

Models: cpu-ldm is configs/ldm_openmoji_cpu.yaml's UNet on its 3 x 8 x 8 latents; ldm4-small is LDM-4's
UNet (224 channels, x1 2 3 4, 274M parameters) on 3 x 16 x 16 latents, attention at 8, 4, 2 (where LDM-4 has
it at 32, 16, 8 of 64); chirodiff is configs/chirodiff_kanjivg_cpu.yaml's denoiser on 120-point sketches;
cpu-dit is configs/dit_openmoji_cpu.yaml's DiT (hidden 128, 6 blocks) on 3 x 8 x 8 latents (16 tokens); dit-s2
is DiT-S/2 (hidden 384, 12 blocks, 6 heads, patch 2) on 4 x 16 x 16 latents (64 tokens), batch 16: 1,024 rows
in each Linear layer. `--tiny` shrinks all of them to seconds (the smoke test).

`--block-sizes 1 32`: the DiTs get a row per block size b, masks of b x b tiles (sparse.block_size) for b > 1,
named e.g. `dit-s2/b32`, where the block kernel (`linear:block`) races too; the sparse tensors the tiles do not cover (`block_excludes`: DiT's patch embedding
and last projection) stay dense there. The default, 1, gives the unstructured rows alone.

Each unstructured DiT row also times Small-Dense of its S and distribution (the DiT narrowed to the sparse one's
non-zero count, tasks/width.py) in the same rounds: `small-dense hidden W: T`, T its time over the dense model's.
"""

import argparse
import copy
import dataclasses
import os
import re
import statistics
import tempfile
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from sparsedm.models.chirodiff import ChiroDiffConfig, ChiroDiffDenoiser  # noqa: E402
from sparsedm.models.dit import DiTConfig, allowed_hidden_sizes, build_dit, unconditional  # noqa: E402
from sparsedm.models.unet import UNetConfig, build_unet  # noqa: E402
from sparsedm.sparse import SparseConfig, SparseEngine  # noqa: E402
from sparsedm.sparse.blocks import matrix_shape  # noqa: E402
from sparsedm.sparse.compress import dense_bytes, save_compressed  # noqa: E402
from sparsedm.sparse.kernels.measure import clock  # noqa: E402
from sparsedm.sparse.kernels.sampling import use_sparse_kernels  # noqa: E402
from sparsedm.sparse.masks import random_mask  # noqa: E402
from sparsedm.sparse.selection import select_sparse_parameters  # noqa: E402
from sparsedm.tasks.width import match_width  # noqa: E402

MODELS = ("cpu-ldm", "ldm4-small", "chirodiff", "cpu-dit", "dit-s2")
BATCHES = [64, 4, 64, 64, 16]  # per model, in order
DIT_SHAPES = {"cpu-dit": (3, 8), "dit-s2": (4, 16)}  # latent channels and side


class Workload:
    """A denoiser and the inputs of one denoiser call on a sampling batch."""

    def __init__(self, name: str, batch: int, tiny: bool):
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.name = name
        self.dit = name in DIT_SHAPES
        if self.dit:
            self.dit_config = (
                DiTConfig(**OmegaConf.load("configs/dit_openmoji_cpu.yaml").model) if name == "cpu-dit" else DiTConfig()
            )
            if tiny:
                self.dit_config.hidden_size, self.dit_config.num_layers, self.dit_config.num_heads = 16, 2, 2
            # untrained stand-ins for trained weights, as the UNet's below: adaLN-Zero would make every output 0
            self.dit_config.zero_init = False
            channels, self.size = DIT_SHAPES[name]
            self.model = build_dit(self.dit_config, self.size, channels)
            self.x, self.mask = torch.randn(batch, channels, self.size, self.size, generator=g), None
        elif name == "chirodiff":
            model = OmegaConf.load("configs/chirodiff_kanjivg_cpu.yaml").model
            cfg = ChiroDiffConfig(hidden_size=8 if tiny else model.hidden_size, num_layers=model.num_layers)
            self.model, length = ChiroDiffDenoiser(cfg), 12 if tiny else 120
            self.x = torch.randn(batch, length, cfg.in_channels, generator=g)
            lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
            lengths[0] = length
            self.mask = torch.arange(length)[None] < lengths[:, None]
        else:
            if name == "cpu-ldm":
                cfg, size = UNetConfig(**OmegaConf.load("configs/ldm_openmoji_cpu.yaml").model), 8
            else:
                cfg, size = UNetConfig(attention_resolutions=[8, 4, 2]), 16
            if tiny:
                cfg.base_channels, cfg.norm_num_groups, cfg.attention_head_dim = 8, 4, 4
            # untrained stand-ins for trained weights: LDM's zero-initialised output layers would make every
            # output exactly 0, which a trained UNet's is not (and leave nothing to compare)
            cfg.zero_init = False
            self.model = build_unet(cfg, size, 3)
            self.x, self.mask = torch.randn(batch, 3, size, size, generator=g), None
        self.model.eval()

    def call(self, model: nn.Module, t: int):
        ts = torch.full((self.x.shape[0],), t, device=self.x.device)
        if self.dit:
            return unconditional(model, self.x, ts)
        if self.mask is not None:
            return model(self.x, ts, self.mask)
        return model(self.x, ts, return_dict=False)[0]


def block_excludes(model: nn.Module, block: int) -> list:
    """sparse.exclude patterns (exact names) of the sparse tensors whose 2-D view b x b tiles do not cover."""
    if block == 1:
        return []
    params = select_sparse_parameters(model)
    return [f"^{re.escape(n)}$" for n, p in params.items() if any(d % block for d in matrix_shape(p.shape))]


def block_sizes(work: Workload, sizes) -> list:
    """(b, row label) per block size: the DiTs get every size, the other models b = 1."""
    return [(b, work.name if b == 1 else f"{work.name}/b{b}") for b in (sizes if work.dit else [1])]


def small_dense_dit(work: Workload, sparsity: float, distribution: str):
    """(model, width): Small-Dense of a DiT workload, its DiT narrowed to the non-zero count of S under
    `distribution` (tasks/width.py), built as the workload's own (same seed, no adaLN-Zero)."""
    channels = work.x.shape[1]

    def build(width: int) -> nn.Module:
        return build_dit(dataclasses.replace(work.dit_config, hidden_size=width), work.size, channels)

    sparse = SparseConfig(method="rigl", distribution=distribution)
    matched = match_width(build, allowed_hidden_sizes(work.dit_config), sparse, sparsity)
    torch.manual_seed(0)
    return build(matched.width).to(work.x.device), matched.width


def masked_copy(model: nn.Module, sparsity: float, distribution: str, block: int = 1):
    masked = copy.deepcopy(model)
    config = SparseConfig(
        method="static",
        sparsity=sparsity,
        distribution=distribution,
        block_size=block,
        exclude=block_excludes(model, block),
    )
    engine = SparseEngine(masked, torch.optim.SGD(masked.parameters(), lr=0.1), config, total_steps=1)
    return masked, engine.masks


@torch.no_grad()
def sampling_run(work: Workload, model: nn.Module, steps: int) -> float:
    now = clock()
    start = now()
    for i in range(steps):
        work.call(model, 999 - i * (1000 // steps))
    return now() - start


def kernel_counts(choices) -> str:
    """e.g. 'Conv2d 3x3 12/40, Linear 20/24': layers that took a sparse kernel / sparse layers, by kind."""
    total, swapped = Counter(), Counter()
    for c in choices:
        kind = c.kind + (f" {c.weight_shape[2]}x{c.weight_shape[3]}" if c.kind == "Conv2d" else "")
        total[kind] += 1
        swapped[kind] += c.kernel is not None
    return ", ".join(f"{k} {swapped[k]}/{total[k]}" for k in sorted(total)) or "no sparse layer"


@torch.no_grad()
def gru_probe(hidden: int, batch: int, length: int, sparsity: float, rounds: int) -> float:
    """Time of one GRU layer as a CSR step loop / torch's dense fused GRU, both at `sparsity`."""
    g = torch.Generator().manual_seed(0)
    gru = nn.GRU(hidden, hidden, batch_first=True)
    for w in (gru.weight_ih_l0, gru.weight_hh_l0):
        w.mul_(random_mask(w.shape, int(w.numel() * (1 - sparsity)), g))
    w_ih, w_hh = gru.weight_ih_l0.to_sparse_csr(), gru.weight_hh_l0.to_sparse_csr()
    x = torch.randn(batch, length, hidden, generator=g)

    def csr_loop():
        gates_x = (torch.addmm(gru.bias_ih_l0[:, None], w_ih, x.reshape(-1, hidden).t())).t().view(batch, length, -1)
        h = torch.zeros(batch, hidden)
        for step in range(length):
            gates_h = torch.addmm(gru.bias_hh_l0[:, None], w_hh, h.t()).t()
            r_x, z_x, n_x = gates_x[:, step].chunk(3, 1)
            r_h, z_h, n_h = gates_h.chunk(3, 1)
            r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
            h = (1 - z) * torch.tanh(n_x + r * n_h) + z * h
        return h

    torch.testing.assert_close(csr_loop(), gru(x)[0][:, -1], rtol=1e-4, atol=1e-5)
    dense, sparse, now = [], [], clock()
    for _ in range(rounds):
        for times, fn in ((dense, lambda: gru(x)), (sparse, csr_loop)):
            start = now()
            fn()
            times.append(now() - start)
    return statistics.median(sparse) / statistics.median(dense)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--distributions", nargs="+", choices=["erk", "uniform"], default=["erk", "uniform"])
    parser.add_argument("--steps", type=int, default=4, help="denoiser calls per sampling run")
    parser.add_argument("--rounds", type=int, default=5, help="turns each model takes; medians are compared")
    parser.add_argument("--batch", type=int, nargs="+", default=BATCHES, help="batch per model (in order)")
    parser.add_argument("--cache-dir", help="sparse-kernel decision cache (default: a fresh temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of the script")
    parser.add_argument("--block-sizes", nargs="+", type=int, default=[1], help="DiTs: a row per sparse.block_size")
    args = parser.parse_args()
    batches = dict(zip(MODELS, args.batch + args.batch[-1:] * len(MODELS)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{torch.get_num_threads()} thread(s), load average {load:.2f} at start, torch {torch.__version__}")
    print(
        f"{'model':<11} {'dist':<8} {'S':>5}  {'masked/dense':>12}  {'sparse/dense':>12}  {'speed-up':>8}  "
        f"{'error':>7}  {'compressed':>10}  layers with a sparse kernel / sparse layers"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        for name in args.models:
            work = Workload(name, batches[name], args.tiny)
            for (block, label), distribution, sparsity in (
                (b, d, s)
                for b in block_sizes(work, args.block_sizes)
                for d in args.distributions
                for s in args.sparsities
            ):
                masked, masks = masked_copy(work.model, sparsity, distribution, block)
                sparse = copy.deepcopy(masked)
                choices = use_sparse_kernels(
                    sparse,
                    lambda model=sparse: work.call(model, 500),
                    names=masks,
                    cache_dir=cache,
                    repeats=3,
                    block_size=block,
                )
                with torch.no_grad():
                    reference = work.call(masked, 500)
                    error = float((work.call(sparse, 500) - reference).abs().max() / reference.abs().max())
                state = masked.state_dict()
                compressed = save_compressed(f"{tmp}/weights.safetensors", state, masks) / dense_bytes(state)
                times = {"dense": [], "masked": [], "sparse": []}
                models = {"dense": work.model, "masked": masked, "sparse": sparse}
                if work.dit and block == 1:  # Small-Dense of S takes its turns with the other three
                    models["small"], width = small_dense_dit(work, sparsity, distribution)
                    models["small"].eval()
                    times["small"] = []
                for key, model in models.items():  # warm-up
                    sampling_run(work, model, 1)
                for _ in range(args.rounds):
                    for key, model in models.items():
                        times[key].append(sampling_run(work, model, args.steps))
                dense, masked_t, sparse_t = (statistics.median(times[k]) for k in ("dense", "masked", "sparse"))
                print(
                    f"{label:<11} {distribution:<8} {sparsity:>5.2f}  {masked_t / dense:>12.3f}  "
                    f"{sparse_t / dense:>12.3f}  {dense / sparse_t:>7.2f}x  {error:>7.1e}  {compressed:>10.3f}  "
                    f"{kernel_counts(choices)}"
                    + (
                        f"  small-dense hidden {width}: {statistics.median(times['small']) / dense:.3f}"
                        if "small" in times
                        else ""
                    ),
                    flush=True,
                )
                del masked, sparse, models, state
    probe = OmegaConf.load("configs/chirodiff_kanjivg_cpu.yaml").model.hidden_size if not args.tiny else 8
    length = 12 if args.tiny else 120
    for sparsity in (0.9,):
        ratio = gru_probe(probe, batches["chirodiff"], length, sparsity, args.rounds)
        print(f"GRU layer {probe} units, {length} steps, S = {sparsity}: CSR step loop / dense fused GRU {ratio:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
