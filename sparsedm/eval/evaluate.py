"""Evaluate a trained run: sample its sparse EMA weights, FID and KID against a real split, memorisation,
RUN/eval.json.

    result = evaluate_run("runs/kanji", EvalSettings(num=200, split="val"))
    results = evaluate_steps("runs/kanji", "all")   # every kept step (train.keep_steps) not scored yet

Each score goes to RUN/eval/step_XXXXXXXX.json; the final step's also to RUN/eval.json.
Before sampling, the EMA weights must be the checkpoint's sparse model (zero wherever its masks are, and at the
final step masks of `summary.json`'s `sparsity_actual`): an FID of weights that are not the sparse model would be
reported as if it were. Reference statistics are cached per data set, split and rendering (`Task.reference_key`) under
`data.cache_dir`/fid, so a sweep computes them once.
"""

import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from sparsedm.config import read_run_config
from sparsedm.diffusion.config import Sampler
from sparsedm.errors import UserError, choice, optional_choice
from sparsedm.eval.fid import (
    Statistics,
    array_batches,
    cached_array,
    cached_reference_features,
    cached_reference_statistics,
    extract_features,
    fid_from_statistics,
    statistics_of,
)
from sparsedm.eval.kid import kid
from sparsedm.eval.memorisation import near_copy_share, pixels
from sparsedm.eval.memorisation import rule as near_copy_rule
from sparsedm.inference.sampling import attach_sparse_kernels, draw_samples, load_run_ema
from sparsedm.runs.checkpoint import checkpoint_path, checkpoint_step, list_checkpoints
from sparsedm.runs.distributed import DistInfo, resolve_device
from sparsedm.runs.files import writing
from sparsedm.runs.provenance import provenance
from sparsedm.runs.run_dir import EVAL, EVAL_STEPS, RunDir, write_json_atomically
from sparsedm.sparse.cost import sampling_flops
from sparsedm.sparse.exploration import ExploredPositions
from sparsedm.sparse.methods import dense_method
from sparsedm.sparse.selection import select_sparse_parameters
from sparsedm.tasks import Task

EVAL_SAMPLES = "eval_samples"  # RUN/samples/eval_samples.npz (all) and .png (the first PREVIEW); _step_N for kept steps
PREVIEW = 64  # samples drawn in the PNG grid


class Split(StrEnum):
    val = "val"
    train = "train"


# Exact zeros allowed beyond the masked ones (a trained weight that happens to be 0.0), as a fraction.
SPARSITY_SLACK = 1e-3


@dataclass
class EvalSettings:
    num: Optional[int] = None  # generated samples; None = as many as the reference split holds (e.g. 200)
    sampler: Optional[Sampler] = None  # ddpm | ddim; None = the run's sample.sampler
    steps: Optional[int] = None  # denoising steps; None = the run's sample.steps (e.g. 50)
    eta: Optional[float] = None  # DDIM's η; None = the run's sample.eta
    split: Split = Split.val  # the real split FID compares with: val | train
    seed: int = 0  # seed of the sampling noise (and, for strokes, of the drawn lengths)
    sampling_seeds: int = 1  # K: the final step is scored with seeds seed .. seed + K - 1, FID and KID their means
    batch_size: int = 50  # images per Inception forward pass
    sparse_kernels: Optional[str] = None  # None | measure | all: sample with sparse kernels (same FID within noise)
    memorisation: bool = True  # also FID against the training split and near-copy shares (memorisation.py)

    def validate(self) -> "EvalSettings":
        if self.num is not None and self.num < 2:
            raise UserError(f"--num {self.num}: FID needs at least 2 samples (a few thousand give a stable value)")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps {self.steps} must be >= 1")
        self.sampler = optional_choice(Sampler, self.sampler, "sampler")
        self.split = choice(Split, self.split, "split")
        if self.batch_size < 1:
            raise UserError(f"batch size {self.batch_size} must be >= 1")
        if self.sampling_seeds < 1:
            raise UserError(f"--sampling-seeds {self.sampling_seeds} must be >= 1")
        return self


def ema_sparsity(model: nn.Module, cfg) -> float:
    """Fraction of exact zeros over the tensors the run's config sparsifies (for Dense: those it would)."""
    s = cfg.sparse
    tensors = select_sparse_parameters(model, list(s.include), list(s.exclude), s.exclude_time_embedding).values()
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / sum(t.numel() for t in tensors)


def check_ema_sparsity(model: nn.Module, cfg, summary: dict, run: RunDir, masks: dict, final: bool) -> float:
    """The EMA's sparsity; UserError unless it is the checkpoint's sparse model: zero wherever its masks are
    (weights grown at an update start at zero, so a step may hold more zeros), and at the final step masks of
    the run's sparsity. A dense run's EMA may hold only a few exact zeros."""
    measured = ema_sparsity(model, cfg)
    weights = dict(model.named_parameters())
    leaks = [name for name, mask in masks.items() if bool(weights[name].detach()[~mask.to(torch.bool)].any())]
    masked = 1 - sum(int(m.sum()) for m in masks.values()) / max(sum(m.numel() for m in masks.values()), 1)
    target = summary["sparsity_actual"]
    if masks and final and abs(masked - target) > 1e-6:
        leaks.append(f"masks of S = {masked:.4f}")
    if leaks or (not masks and measured > target + SPARSITY_SLACK):
        raise UserError(
            f"the EMA weights of {run.path} are {measured:.4f} zeros in their sparse tensors, but the run trained "
            f"at S = {target:.4f} (summary.json sparsity_actual; {', '.join(leaks[:3]) or 'no masks'}): its "
            "checkpoint is not the sparse model, so no FID is reported"
        )
    return measured


def reference_statistics(task: Task, settings: EvalSettings, device: torch.device, progress: bool) -> Statistics:
    """FID statistics of the real split, computed once per data set, split and rendering, then cached. KID (and
    memorisation) keep the split's features, so they are those features' statistics: the split goes through
    Inception once."""
    return cached_reference_statistics(
        task.reference_key(settings.split),
        lambda: array_batches(task.reference_images(settings.split), batch_size=settings.batch_size),
        Path(task.cfg.data.cache_dir) / "fid",
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
        features_fn=lambda: reference_features(task, settings.split, settings, device, progress),
    )


def reference_images(task: Task, split: str) -> np.ndarray:
    """The pictures of a real split (`Task.reference_images`), drawn once, then cached beside the statistics."""
    key = task.reference_key(split)
    return cached_array(key, "images", lambda: task.reference_images(split), Path(task.cfg.data.cache_dir) / "fid")


def reference_features(task: Task, split: str, settings: EvalSettings, device, progress: bool) -> np.ndarray:
    """Inception features of every item of a real split, computed once, then cached beside the statistics."""
    return cached_reference_features(
        task.reference_key(split),
        lambda: array_batches(reference_images(task, split), batch_size=settings.batch_size),
        Path(task.cfg.data.cache_dir) / "fid",
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
    )


_HELDOUT_SHARES = {}  # (train key, val key) -> the held-out split's near-copy shares
_CONTROL_SHARES = {}  # train key -> the positive control's detection rates
CONTROL_ITEMS = 200  # near copies by construction in the positive control (or the training split, if fewer)
_TRAIN_GROUPS = {}  # train key -> the training items' variant groups (or None)


def _mean_or_none(values: list):
    return None if any(v is None for v in values) else float(np.mean(values))


def kid_record(features: np.ndarray, reference: np.ndarray, suffix: str = "") -> dict:
    """kid, kid_std (over its subsets; null when one subset is both whole sets) and kid_subset_size, or with
    `suffix` (kid_train, ...)."""
    result = kid(features, reference)
    return {f"kid{suffix}": result.mean, f"kid{suffix}_std": result.std, f"kid{suffix}_subset_size": result.subset_size}


def memorisation(task: Task, settings: EvalSettings, features: np.ndarray, images: np.ndarray, device, progress):
    """FID and KID against the training split and the near-copy shares of the samples (memorisation.py), with
    the same shares for the held-out split as the baseline."""
    train_features = reference_features(task, "train", settings, device, progress)
    train_pixels = pixels(reference_images(task, "train"))
    if task.reference_key("train") not in _TRAIN_GROUPS:
        _TRAIN_GROUPS[task.reference_key("train")] = task.reference_groups("train")
    groups = _TRAIN_GROUPS[task.reference_key("train")]
    key = (task.reference_key("train"), task.reference_key("val"))
    if key not in _HELDOUT_SHARES:  # the baseline does not depend on the model: once per process
        val_features = reference_features(task, "val", settings, device, progress)
        val_pixels = pixels(reference_images(task, "val"))
        _HELDOUT_SHARES[key] = {
            "near_copy_heldout": near_copy_share(val_features, train_features, groups),
            "near_copy_heldout_pixels": near_copy_share(val_pixels, train_pixels, groups),
        }
    if task.reference_key("train") not in _CONTROL_SHARES:  # nor does the positive control
        _CONTROL_SHARES[task.reference_key("train")] = positive_control(
            task, train_features, train_pixels, groups, settings, device, progress
        )
    return {
        **_CONTROL_SHARES[task.reference_key("train")],
        "fid_train": fid_from_statistics(statistics_of(features), statistics_of(train_features)),
        **kid_record(features, train_features, "_train"),
        "train_size": len(train_features),
        "near_copy": near_copy_share(features, train_features, groups),
        "near_copy_pixels": near_copy_share(pixels(images), train_pixels, groups),
        **_HELDOUT_SHARES[key],
        "near_copy_rule": near_copy_rule(groups),
    }


def positive_control(task: Task, train_features, train_pixels, groups, settings: EvalSettings, device, progress):
    """The near-copy test on items that are near copies of training items by construction (`Task.near_copies`):
    the share it detects in Inception features and in pixels. A space whose rate is low cannot show a copy; {} for
    a task that makes none."""
    if not task.near_copy_kind:
        return {}
    # cached beside the splits' features, under a key that names how the copies are made: an image study's
    # 200 reconstructions cost about 4 minutes of Inception on one thread, once per machine rather than per process
    key, cache = (
        f"{task.reference_key('train')}/near-copies-{task.near_copy_kind}",
        Path(task.cfg.data.cache_dir) / "fid",
    )
    images = cached_array(key, "images", lambda: task.near_copies(CONTROL_ITEMS), cache)
    features = cached_reference_features(
        key,
        lambda: array_batches(images, batch_size=settings.batch_size),
        cache,
        batch_size=settings.batch_size,
        device=device,
        progress=progress,
    )
    return {
        "near_copy_control": near_copy_share(features, train_features, groups),
        "near_copy_control_pixels": near_copy_share(pixels(images), train_pixels, groups),
        "near_copy_control_size": len(images),
        "near_copy_control_kind": task.near_copy_kind,
    }


def exploration_rate(engine_state: dict, summary: dict) -> Optional[float]:
    """The exploration rate at the checkpoint (its engine's record), else the summary's; None if neither has one
    (runs trained before it was recorded)."""
    explored = engine_state.get("explored")
    return ExploredPositions(explored).rate() if explored else summary.get("exploration_rate")


def step_file(run: RunDir, step: int) -> Path:
    """RUN/eval/step_XXXXXXXX.json: the score of the checkpoint of that step."""
    return run.path / EVAL_STEPS / f"step_{step:08d}.json"


def kept_steps(run: RunDir, cfg, summary: dict) -> List[int]:
    """The steps whose checkpoints are on disk and kept for scoring: `train.keep_steps` and the final one."""
    wanted = {*cfg.train.keep_steps, summary["steps"]}
    return [step for step in map(checkpoint_step, list_checkpoints(run.checkpoints)) if step in wanted]


def unscored_steps(run_path) -> List[int]:
    """Kept steps of a trained run with no score yet (eval.json for the final one, eval/ for the others)."""
    run = RunDir(run_path)
    cfg, summary = read_run_config(run), run.read_summary()
    final = summary["steps"]
    return [
        step
        for step in kept_steps(run, cfg, summary)
        if not step_file(run, step).exists() or (step == final and not (run.path / EVAL).exists())
    ]


def evaluate_run(
    run_path,
    settings: Optional[EvalSettings] = None,
    overwrite: bool = False,
    progress: bool = True,
    at_step: Optional[int] = None,
) -> dict:
    """Sample the EMA weights of the run's final checkpoint (or of the kept one of step `at_step`), FID against
    `settings.split`, memorisation; writes and returns RUN/eval/step_XXXXXXXX.json, and RUN/eval.json for the
    final step."""
    settings = (settings or EvalSettings()).validate()
    run = RunDir(run_path)
    run.read_config()  # a UserError if it is no run folder
    summary = run.read_summary()  # a UserError until training has finished
    final = summary["steps"]
    step = final if at_step is None else at_step
    if not checkpoint_path(run.checkpoints, step).exists():
        kept = ", ".join(map(str, map(checkpoint_step, list_checkpoints(run.checkpoints)))) or "none"
        raise UserError(
            f"{run.path} has no checkpoint of step {step} (kept steps: {kept}); list the steps to keep in "
            "train.keep_steps before training"
        )
    outputs = [step_file(run, step)] + ([run.path / EVAL] if step == final else [])
    if not overwrite and any(path.exists() for path in outputs):
        raise UserError(f"{next(p for p in outputs if p.exists())} exists; pass --overwrite to replace it")
    start = time.time()
    cfg, state, task, model = load_run_ema(run, str(checkpoint_path(run.checkpoints, step)))
    device = resolve_device(cfg.train.device, DistInfo())
    model = model.to(device).eval()
    measured = check_ema_sparsity(model, cfg, summary, run, state["engine"]["masks"], final=step == final)
    kernels = attach_sparse_kernels(model, cfg, settings.sparse_kernels)
    reference = reference_statistics(task, settings, device, progress)

    num = settings.num or reference.n
    sampling = cfg.sample.with_options(sampler=settings.sampler, steps=settings.steps, eta=settings.eta)
    name = EVAL_SAMPLES if step == final else f"{EVAL_SAMPLES}_step_{step:08d}"
    seeds = [settings.seed + k for k in range(settings.sampling_seeds if step == final else 1)]
    real = reference_features(task, settings.split, settings, device, progress)
    scores = []  # per sampling seed: FID and KID; memorisation is tested on the first seed's samples
    for seed in seeds:
        suffix = "" if seed == seeds[0] else f"_seed{seed}"
        samples = draw_samples(run, task, model, device, sampling, num, seed, name + suffix, progress, PREVIEW)
        seed_images = task.to_images(samples)
        seed_features = extract_features(
            array_batches(seed_images, batch_size=settings.batch_size),
            batch_size=settings.batch_size,
            device=device,
            progress=progress,
        )
        scores.append(
            {"fid": fid_from_statistics(statistics_of(seed_features), reference), **kid_record(seed_features, real)}
        )
        if seed == seeds[0]:
            images, features = seed_images, seed_features

    f_sparse, f_dense = summary["flops_forward_sparse"], summary["flops_forward_dense"]
    matched = task.matched_width()
    result = {
        "fid": float(np.mean([score["fid"] for score in scores])),  # the mean over the sampling seeds
        "kid": float(np.mean([score["kid"] for score in scores])),
        "kid_std": _mean_or_none([score["kid_std"] for score in scores]),  # over its subsets, mean over seeds
        "kid_subset_size": scores[0]["kid_subset_size"],
        "sampling_seeds": seeds,
        "fid_by_sampling_seed": [score["fid"] for score in scores],
        "kid_by_sampling_seed": [score["kid"] for score in scores],
        "step": step,  # the checkpoint scored; train_steps is the run's length
        "n_samples": num,
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "eta": sampling.eta,
        "sample_seed": settings.seed,
        "reference_split": settings.split,
        "reference_size": reference.n,
        "reference_key": task.reference_key(settings.split),
        "data": summary.get("data", task.data_name()),
        "autoencoder_sha256": task.frozen_identity(),  # Latent Diffusion: the one it was trained and decoded with
        "fid_features": "Inception-v3 pool3, TF 2015 weights (torch-fidelity's)",  # FID's and KID's
        "ema_sparsity": measured,
        "method": summary["method"],
        "small_dense": None if matched is None else matched.record(),  # Small-Dense: the width matched to an S
        "sparsity": summary["sparsity"],
        "sparsity_actual": summary["sparsity_actual"],
        "exploration_rate": exploration_rate(state["engine"], summary),  # at the step scored
        "distribution": summary["distribution"],
        "prune_rate": summary["prune_rate"],
        "block_size": cfg.sparse.block_size,  # b of the masks' b x b tiles (1: unstructured; files before it have none)
        "update_interval": summary["update_interval"],
        "train_steps": final,
        "seed": summary.get("seed"),
        "params_total": summary["params_total"],
        "params_nonzero": summary["params_nonzero"],
        "flops_forward_dense": f_dense,
        "flops_forward_sparse": f_sparse,
        "train_batch_size": cfg.train.batch_size,
        "flops_train_step": summary["flops_train_step"],  # per sample, like the forward FLOPs
        "flops_train_step_dense": dense_method().train_flops(f_sparse, f_dense, summary["update_interval"]),
        "flops_train_total": summary["flops_train_step"] * cfg.train.batch_size * step,  # up to the step scored
        # the training steps' process CPU and wall seconds up to the step scored (None: trained before recorded)
        **{key: state.get("step_seconds", {}).get(key) for key in ("train_cpu_s", "train_wall_s")},
        # bytes of the training state (train/state_bytes.py; None: trained before it was recorded)
        "train_state_bytes_total": summary.get("train_state_bytes", {}).get("total"),
        "flops_sample": sampling_flops(f_sparse, sampling.steps),
        **(memorisation(task, settings, features, images, device, progress) if settings.memorisation else {}),
        "sparse_kernels": kernels is not None,  # sampled with sparse kernels (--sparse-kernels)
        "sparse_kernel_layers": kernels.swapped() if kernels is not None else [],
        "eval_time_s": time.time() - start,
        "provenance": provenance(device),
        "train_provenance": summary.get("provenance"),  # None for runs trained before it was recorded
    }
    with writing():
        outputs[0].parent.mkdir(exist_ok=True)
    for path in outputs:
        write_json_atomically(path, result)
    return result


def evaluate_steps(run_path, steps, settings: Optional[EvalSettings] = None, overwrite: bool = False, progress=True):
    """evaluate_run at each of `steps` ("all": every kept step not scored yet, or every kept step with
    `overwrite`; a step scored in one of its two files only, eval.json and eval/, is scored again); returns the
    results in step order."""
    if steps == "all":
        run = RunDir(run_path)
        steps = kept_steps(run, read_run_config(run), run.read_summary()) if overwrite else unscored_steps(run_path)
        overwrite = True
    return [evaluate_run(run_path, settings, overwrite, progress, at_step=step) for step in sorted(steps)]


def settings_record(settings: EvalSettings) -> dict:
    """What makes two evaluations comparable (neither the Inception batch size nor sparse kernels change FID)."""
    record = asdict(settings)
    record.pop("batch_size")
    record.pop("sparse_kernels")
    record.pop("memorisation")  # adds figures, changes none
    if record["sampling_seeds"] == 1:  # as every sweep pinned before the option existed
        record.pop("sampling_seeds")
    return record
