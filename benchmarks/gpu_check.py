"""A check to run on a GPU machine (never in CI): the tasks train, resume, count FLOPs and sample there.

    python benchmarks/gpu_check.py [--out /tmp/gpu_check] [--steps 20] [--tasks chirodiff ldm dit]

For each task (ChiroDiff on KanjiVG from the kanjivg package; Latent Diffusion and the DiT on generated shape
images with a tiny autoencoder trained first, as the tests do), shrunk to seconds by config overrides:
1. per precision (fp32, bf16, and fp16 on CUDA): a dense and a RigL S = 0.5 `Trainer` take turns, block by
   block, and the time per `train_step` of RigL / dense is printed; then, fp32, RigL S = 0.9 with
   `sparse.kernels=measure` (compact layers) and masked take turns the same way: compact / masked; for the DiT
   also with masks of 8 x 8 tiles (sparse.block_size=8: the block way on the device);
2. the RigL fp32 run's FLOPs (`summary.json`, counted on the device) equal the count of the same model,
   masks and input on the CPU;
3. the same run stopped half-way and resumed ends with the same weights and masks fingerprints;
4. `sample_run` draws finite samples, and with every sparse layer on a sparse kernel the same ones;
5. RigL trained with `sparse.kernels=measure` (compact layers, plans measured on the device: cuSPARSE CSR
   products and `sampled_addmm` on CUDA) ends with the masked run's masks and, to fp32 rounding, weights.
Without CUDA it says "no GPU" and checks all it can on the CPU (fp32 and bf16). Exit status 1 on a failure.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sparsedm.config import load_config
from sparsedm.inference.sampling import sample_run
from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint
from sparsedm.sparse import forward_flops, masked_densities
from sparsedm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' shape images and tiny autoencoder

from tests.ldm_helpers import dit_overrides, ldm_overrides, train_tiny_autoencoder, write_shapes  # noqa: E402

CHIRODIFF_TINY = [
    "data.max_items=200",
    "data.max_points=50",
    "data.max_strokes=8",
    "data.spacing=0.1",
    "model.hidden_size=32",
    "model.num_layers=2",
    "train.batch_size=16",
    "train.val_batches=1",
    "sparse.update_interval=4",
]


IMAGE_TASKS = {
    "ldm": ("configs/ldm_openmoji_cpu.yaml", ldm_overrides),
    "dit": ("configs/dit_openmoji_cpu.yaml", dit_overrides),
}


def task_setup(task: str, out: Path, device: str):
    """(config file, overrides) of a tiny run of `task` on `device`; an image task's autoencoder is trained here
    first."""
    cache = out / "cache"
    if task == "chirodiff":
        return "configs/chirodiff_kanjivg_cpu.yaml", [
            *CHIRODIFF_TINY,
            f"data.cache_dir={cache}",
            f"train.device={device}",
        ]
    images, autoencoder = out / "shapes", out / "autoencoder"
    if not (autoencoder / "config.json").exists():
        write_shapes(images)
        train_tiny_autoencoder(images, cache, autoencoder, steps=20)
    config, overrides = IMAGE_TASKS[task]
    return config, [*overrides(images, cache, autoencoder), f"train.device={device}"]


def trainer(config, overrides, out, **kwargs) -> Trainer:
    return Trainer(load_config(config, overrides), str(out), progress=False, **kwargs)


def step_ratio(config, overrides, out: Path, variants: dict, steps: int, block: int, sync) -> float:
    """Time per train_step of the second of `variants` ({name: overrides}) / the first's, taking turns in blocks of
    `block` steps; each built as `fit` builds it (its compact layers too, with sparse.kernels)."""
    runs = {}
    for name, extra in variants.items():
        run = trainer(config, [*overrides, *extra, f"train.steps={steps + 2}"], out / f"time_{name}", overwrite=True)
        run._build()
        run._use_kernels()
        for _ in range(2):  # warm-up: kernels picked, caches filled
            run.train_step()
        runs[name] = [run, 0.0]
    for _ in range(0, steps, block):
        for entry in runs.values():
            sync()
            start = time.perf_counter()
            for _ in range(block):
                entry[0].train_step()
            sync()
            entry[1] += time.perf_counter() - start
    first, second = runs.values()
    return second[1] / first[1]


def check_flops(run: Trainer, summary: dict) -> bool:
    """The device's FLOPs figure equals the count of a CPU copy of the model, masks and example."""
    model = copy.deepcopy(run.model).cpu().eval()
    masks = {n: m.cpu() for n, m in run.engine.masks.items()}
    example = run.task.collate([run.train_set[i] for i in run.batches.indices(0)[:1]])
    cpu = forward_flops(model, run.task.flops_inputs(example), masked_densities(masks))
    return all(cpu[k] == summary[k] for k in ("flops_forward_sparse", "flops_forward_dense"))


def check_resume(config, overrides, out: Path, steps: int) -> bool:
    full = trainer(config, [*overrides, f"train.steps={steps}"], out / "full", overwrite=True).fit()
    assert (
        trainer(
            config, [*overrides, f"train.steps={steps}", f"train.stop_at={steps // 2}"], out / "split", overwrite=True
        ).fit()
        is None
    )
    split = trainer(config, [*overrides, f"train.steps={steps}"], out / "split", resume=True).fit()
    return all(full[k] == split[k] for k in ("weights_sha256", "masks_sha256"))


def check_compact_kernels(config, overrides, out: Path, steps: int) -> bool:
    """sparse.kernels=measure (compact layers, plans measured on this device) trains as masked training does:
    the same masks, weights equal to fp32 rounding."""
    last = {}
    for kernels in ("masked", "measure"):
        run_out = out / f"kernels-{kernels}"
        trainer(
            config, [*overrides, f"train.steps={steps}", f"sparse.kernels={kernels}"], run_out, overwrite=True
        ).fit()
        last[kernels] = load_checkpoint(list_checkpoints(run_out / "checkpoints")[-1])
    a, b = last["masked"], last["measure"]
    masks = all(torch.equal(m, b["engine"]["masks"][n]) for n, m in a["engine"]["masks"].items())
    # an attention key bias shifts every key of a query alike, which softmax ignores: its exact gradient is 0, and
    # Adam turns the rounding noise in its place into lr-sized steps that differ between the two storages
    compared = {n: w for n, w in a["model"].items() if not n.endswith("to_k.bias")}
    close = all(torch.allclose(w, b["model"][n], rtol=1e-4, atol=1e-5) for n, w in compared.items())
    return masks and close


def check_samples(run_dir: Path) -> bool:
    """Finite samples, and the same (to fp32 tolerance) with every sparse layer on a sparse kernel."""
    drawn = {}
    for mode in (None, "all"):
        sample_run(str(run_dir), num=4, steps=3, seed=1, progress=False, sparse_kernels=mode)
        with np.load(run_dir / "samples" / "samples.npz") as f:
            drawn[mode] = {k: f[k] for k in f}
    numeric = [k for k in drawn[None] if drawn[None][k].dtype.kind == "f"]
    finite = all(np.isfinite(drawn[None][k]).all() for k in numeric)
    same = all(np.allclose(drawn[None][k], drawn["all"][k], rtol=1e-3, atol=1e-3) for k in numeric)
    return finite and same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/sparsedm_gpu_check", help="folder for the runs (replaced)")
    parser.add_argument("--tasks", nargs="+", choices=["chirodiff", *IMAGE_TASKS], default=["chirodiff", *IMAGE_TASKS])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and precision")
    parser.add_argument("--block", type=int, default=5, help="steps a method runs before the other's turn")
    parser.add_argument("--resume-steps", type=int, default=8, help="length of the stop-and-resume run")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    precisions = ["fp32", "bf16"] + (["fp16"] if cuda else [])
    print(f"GPU: {torch.cuda.get_device_name()}" if cuda else "no GPU: checking on the CPU (fp32, bf16; no fp16)")
    results = {}
    for task in args.tasks:
        out = Path(args.out) / task
        out.mkdir(parents=True, exist_ok=True)
        config, overrides = task_setup(task, out, device)
        for precision in precisions:
            variants = {
                f"{method}_{precision}": [f"sparse.method={method}", f"train.precision={precision}"]
                for method in ("dense", "rigl")
            }
            ratio = step_ratio(config, overrides, out, variants, args.steps, args.block, sync)
            print(f"{task} {precision}: time per step RigL S = 0.5 / dense = {ratio:.3f}", flush=True)
            results[f"{task} {precision} step ratio"] = ratio
        compact = ["sparse.method=rigl", "sparse.sparsity=0.9", "train.precision=fp32"]
        variants = {f"rigl_{kernels}": [*compact, f"sparse.kernels={kernels}"] for kernels in ("masked", "measure")}
        ratio = step_ratio(config, overrides, out, variants, args.steps, args.block, sync)
        print(f"{task}: time per step RigL S = 0.9, sparse.kernels=measure / masked = {ratio:.3f}", flush=True)
        results[f"{task} compact step ratio"] = ratio
        if task == "dit":  # the speed lever for transformers: 8 x 8 tiles (the tiny DiT's widths are 32), block way
            tiles = [*compact, "sparse.block_size=8", "sparse.exclude=[pos_embed.proj,proj_out_2]"]
            variants = {
                f"rigl_b8_{kernels}": [*tiles, f"sparse.kernels={kernels}"] for kernels in ("masked", "measure")
            }
            ratio = step_ratio(config, overrides, out, variants, args.steps, args.block, sync)
            print(f"{task}: time per step RigL S = 0.9, 8 x 8 blocks, measure / masked = {ratio:.3f}", flush=True)
            results[f"{task} compact blocks step ratio"] = ratio
        rigl = [*overrides, "sparse.method=rigl", "sparse.sparsity=0.5", "train.precision=fp32"]
        run = trainer(config, [*rigl, f"train.steps={args.resume_steps}"], out / "flops", overwrite=True)
        checks = {
            "FLOPs equal the CPU count": check_flops(run, run.fit()),
            "stop-and-resume fingerprints equal": check_resume(config, rigl, out, args.resume_steps),
            "samples finite, same with sparse kernels": check_samples(out / "full"),
            "sparse.kernels=measure trains as masked": check_compact_kernels(config, rigl, out, args.resume_steps),
        }
        for name, ok in checks.items():
            print(f"{task}: {name}: {'ok' if ok else 'FAILED'}", flush=True)
            results[f"{task}: {name}"] = ok
    (Path(args.out) / "gpu_check.json").write_text(json.dumps({"device": device, **results}, indent=1))
    failed = [k for k, v in results.items() if v is False]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
