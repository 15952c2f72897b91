"""The `sparsedm` command line: train, sample, fid, evaluate, sweep, report, compare, plot, demo,
train-autoencoder and export (`sparsedm COMMAND --help`; docs/cli.md)."""

import argparse
import json
import logging
import os
import sys

from sparsedm.errors import UserError


def _train(args) -> None:
    from sparsedm.config import load_config
    from sparsedm.train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    summary = Trainer(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress).fit()
    if summary is None:
        print(f"stopped early with a checkpoint; continue with: sparsedm train {args.config} --out {args.out} --resume")
    elif summary:
        print(
            f"{summary['method']}: steps {summary['steps']}, loss {summary['loss_final']:.4f}, val loss {summary['val_loss_final']:.4f}, "
            f"non-zero params {summary['params_nonzero']:,}/{summary['params_total']:,}, "
            f"sparse/dense forward FLOPs {summary['flops_forward_sparse'] / summary['flops_forward_dense']:.3f} -> {args.out}"
        )


def _sample(args) -> None:
    from sparsedm.inference.sampling import sample_run

    out = sample_run(
        args.run,
        num=args.num,
        steps=args.steps,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
        sparse_kernels=args.sparse_kernels,
    )
    print(f"samples -> {out / 'samples.npz'}, {out / 'samples.png'}")


def _train_autoencoder(args) -> None:
    from sparsedm.config import load_autoencoder_config
    from sparsedm.tasks.autoencoder import prepare_autoencoder_folder, read_autoencoder_metrics
    from sparsedm.train.trainer import Trainer

    cfg = load_autoencoder_config(args.config, args.overrides)
    prepare_autoencoder_folder(args.out, args.resume, args.overwrite)
    trainer = Trainer(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    summary = trainer.fit()
    if summary is None:
        print("stopped early with a checkpoint; continue with the same command and --resume")
        return
    if not summary:  # not rank 0
        return
    m = read_autoencoder_metrics(args.out)
    print(
        f"{m['kind']} autoencoder, f={m['downsampling_factor']}, latents {'x'.join(map(str, m['latent_shape']))}: steps {m['steps']}, "
        f"validation L1 {m['val_l1_before']:.4f} -> {m['val_l1_after']:.4f}, PSNR {m['val_psnr_before']:.2f} -> {m['val_psnr_after']:.2f} dB, "
        f"scaling factor {m['scaling_factor']:.4f} -> {args.out}"
    )


def _export(args) -> None:
    from sparsedm.inference.export import export_run

    info = export_run(args.run, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite, compress=args.compress)
    print(
        f"{info['pipeline']} (step {info['step']}, non-zero {info['nonzero']:,}/{info['total']:,} in the sparse tensors) -> {info['out']}"
    )
    if args.compress:
        print(f"compressed {info['denoiser']} ({info['compressed_ratio']:.3f}x of dense fp32) -> {info['compressed']}")


def _fid(args) -> None:
    from sparsedm.eval.fid import fid_between
    from sparsedm.eval.sample_images import samples_npz_to_images
    from sparsedm.runs.distributed import DistInfo, resolve_device

    result = fid_between(
        args.path_a,
        args.path_b,
        backend=args.backend,
        batch_size=args.batch_size,
        device=resolve_device(args.device, DistInfo()),
        progress=not args.no_progress,
        npz_to_images=samples_npz_to_images,
    )
    print(json.dumps(result) if args.json else f"fid: {result['fid']:.4f} ({result['n_a']} vs {result['n_b']} images)")


def _eval_settings(args):
    from sparsedm.eval.evaluate import EvalSettings

    return EvalSettings(
        num=args.num,
        sampler=args.sampler,
        steps=args.sample_steps,
        eta=args.eta,
        split=args.split,
        seed=args.sample_seed,
        sampling_seeds=args.sampling_seeds,
        sparse_kernels=args.sparse_kernels,
        memorisation=not args.no_memorisation,
    )


def _at_steps(values):
    """--at-step: None (the final step), "all", or whole steps; UserError otherwise."""
    if values is None or values == ["all"]:
        return values and "all"
    try:
        return [int(value) for value in values]
    except ValueError:
        raise UserError(f"--at-step {' '.join(values)}: give steps (e.g. 1500 3000) or all") from None


def _evaluate(args) -> None:
    from sparsedm.eval.evaluate import evaluate_run, evaluate_steps, step_file
    from sparsedm.runs.run_dir import RunDir

    settings, steps, progress = _eval_settings(args), _at_steps(args.at_step), not args.no_progress
    if steps is None:
        results = [evaluate_run(args.run, settings, overwrite=args.overwrite, progress=progress)]
    else:
        results = evaluate_steps(args.run, steps, settings, overwrite=args.overwrite, progress=progress)
    if not results:
        print(f"every kept step of {args.run} is scored already (--overwrite scores them again)")
    for r in results:
        copies = f", near copies {r['near_copy']:.1%}" if "near_copy" in r else ""
        print(
            f"{r['method']} step {r['step']}: FID {r['fid']:.2f}, KID {r['kid']:.4f} ({r['n_samples']} samples, "
            f"{len(r['sampling_seeds'])} sampling seed(s), {r['sampler']} "
            f"{r['steps']} steps, against {r['reference_size']} {r['reference_split']} images){copies}, EMA sparsity "
            f"{r['ema_sparsity']:.3f} -> {step_file(RunDir(args.run), r['step'])}"
        )
        if r["sparse_kernels"]:
            print(f"sampled with sparse kernels in {len(r['sparse_kernel_layers'])} layers")


def _print_report(report) -> None:
    print(report.markdown)
    print("\n".join(f"-> {path}" for path in report.files))


def _print_sweep(outcomes, report) -> None:
    """The sweep's table, then a UserError if any run failed (the log above says why)."""
    counts = {
        kind: sum(o == kind for o in outcomes.values())
        for kind in ("trained", "evaluated", "done", "stopped", "busy", "failed")
    }
    extra = {"stopped": "stopped", "busy": "running elsewhere", "failed": "failed"}
    print(
        f"{len(outcomes)} runs: {counts['trained']} trained, {counts['evaluated']} evaluated, {counts['done']} finished before"
        + "".join(f", {counts[kind]} {label}" for kind, label in extra.items() if counts[kind])
    )
    if report is not None:
        _print_report(report)
    failed = [name for name, outcome in outcomes.items() if outcome == "failed"]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(outcomes)} runs failed ({', '.join(failed)}); the log above says why; "
            "the same command retries them"
        )


LAUNCHER_OPTIONS = ("tasks", "partition", "time", "cpus_per_task", "gpus_per_task", "parallelism")  # of --launcher


def _sweep(args) -> None:
    from sparsedm.experiments.grid import SweepGrid
    from sparsedm.experiments.shards import parse_shard
    from sparsedm.experiments.sweep import resolve_grid, run_sweep

    defaults = SweepGrid()
    grid = SweepGrid(
        args.methods or defaults.methods,
        args.sparsities or defaults.sparsities,
        args.prune_rates or defaults.prune_rates,
        args.seeds,
        args.block_sizes,
    )
    shard = parse_shard(args.shard) if args.shard else None
    if args.list:
        _list_sweep(args.out, resolve_grid(grid, args.config, args.overrides), shard)
        return
    if args.launcher:
        _launch_sweep(args, grid, shard)
        return
    given = [f"--{name.replace('_', '-')}" for name in LAUNCHER_OPTIONS if getattr(args, name) is not None]
    if given:
        raise UserError(f"{' '.join(given)}: options of --launcher; add --launcher slurm or local, or leave them out")
    outcomes, report = run_sweep(
        args.config,
        args.out,
        grid,
        args.overrides,
        _eval_settings(args),
        progress=not args.no_progress,
        workers=args.workers,
        shard=shard,
        train_only=args.train_only,
    )
    _print_sweep(outcomes, report)


def _list_sweep(out, grid, shard) -> None:
    """Every run with its slice and state; for a launched sweep (launcher.py) also its task's job id and state."""
    from sparsedm.experiments.launcher import job_states, read_jobs
    from sparsedm.experiments.sweep import list_sweep

    jobs = read_jobs(out)
    shards = shard[1] if shard else jobs["tasks"] if jobs else 1
    tasks = job_states(out, jobs) if jobs and jobs["tasks"] == shards else {}
    rows = list_sweep(out, grid, shards)
    width = max(len(name) for _, name, _ in rows)
    for index, name, state in rows:
        task = tasks.get(index)
        if task is not None:
            if task.get("outcomes", {}).get(name) == "failed":
                state = "failed"
            elif task["state"] == "failed" and state != "done":
                state = f"failed: {task['error']}"
            elif state == "to do" and task["state"] == "submitted":
                state = "submitted"
            state += f"  job {task['job_id']} ({task['state']})"
        print(f"{index}/{shards}  {name:<{width}}  {state}")


def _launch_sweep(args, grid, shard) -> None:
    from sparsedm.experiments.aggregate import read_runs
    from sparsedm.experiments.launcher import FOLDER, Resources, job_states, launch, read_jobs
    from sparsedm.experiments.report import build_report

    if shard is not None or args.workers != 1:
        raise UserError("--launcher makes its own slices (--tasks N); leave out --shard and --workers")
    given = {
        name: getattr(args, name) for name in LAUNCHER_OPTIONS if name != "tasks" and getattr(args, name) is not None
    }
    resources = Resources(**{("time_min" if name == "time" else name): value for name, value in given.items()})
    settings = _eval_settings(args)
    job_ids = launch(
        args.config, args.out, grid, args.overrides, settings, args.launcher, args.tasks, resources, args.train_only
    )
    if args.launcher == "slurm":
        print(f"submitted {len(job_ids)} tasks: {' '.join(job_ids)}; follow them with `sparsedm sweep ... --list`")
        return
    outcomes = {}
    for k, task in job_states(args.out, read_jobs(args.out)).items():
        if task["state"] != "finished":
            raise UserError(
                f"task {k} (job {task['job_id']}) {task['state']}: {task.get('error', 'no result')}; its log is in "
                f"{args.out}/{FOLDER}/submitit/{task['job_id']}_0_log.err; the same command continues the sweep"
            )
        outcomes.update(task["outcomes"])
    _print_sweep(outcomes, build_report(args.out) if read_runs(args.out) else None)


def _report(args) -> None:
    from sparsedm.experiments.report import build_report

    _print_report(build_report(args.sweep))


def _archive(args) -> None:
    from sparsedm.experiments.archive import archive_sweep

    kept, left_out = archive_sweep(args.sweep, args.dest)
    for name, state in left_out:
        print(f"left out {name}: {state}")
    print(f"kept {len(kept)} finished runs in {args.dest}" + (f": {', '.join(kept)}" if kept else ""))


def _compare(args) -> None:
    from sparsedm.experiments.comparisons import compare_sweeps

    print(compare_sweeps(args.a, args.b), end="")


def _plot(args) -> None:
    from sparsedm.runs.plots import plot_run

    files = plot_run(args.run)
    print("\n".join(f"-> {path}" for path in files))
    if len(files) == 1:
        print("(the per-layer chart comes with summary.json, when training ends; a dense run has none)")


def _demo(args) -> None:
    from sparsedm.experiments.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out=args.out, steps=args.steps, num=args.num, overrides=args.overrides, workers=args.workers
    )
    _print_sweep(*run_demo(settings, progress=not args.no_progress))


def _add_eval_options(parser, prefix: str) -> None:
    """The evaluation options; `prefix` ("--" or "--sample-") names the steps and seed options."""
    parser.add_argument("--num", type=int, help="generated samples for FID (default: as many as the reference split)")
    parser.add_argument(f"{prefix}steps", dest="sample_steps", type=int, help="denoising steps (default: sample.steps)")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: sample.sampler")
    parser.add_argument("--eta", type=float, help="DDIM's eta (default: sample.eta)")
    parser.add_argument("--split", choices=["val", "train"], default="val", help="real split FID compares with")
    parser.add_argument(f"{prefix}seed", dest="sample_seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument(
        "--sampling-seeds",
        type=int,
        default=1,
        metavar="K",
        help="score the final step with K sampling seeds (the seed and the K - 1 after it); FID and KID are their means",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-memorisation", action="store_true", help="skip FID against the training split and near-copy shares"
    )
    _add_sparse_kernels_option(parser)


def _add_sparse_kernels_option(parser) -> None:
    parser.add_argument(
        "--sparse-kernels",
        nargs="?",
        const="measure",
        choices=["measure", "all"],
        help="sample with sparse kernels: in each sparse layer where measured faster (measure, the default), or in all",
    )


class MethodsHelp(argparse.HelpFormatter):
    """Fills {methods}, {paper_methods} and {paper_names} in help texts from sparse/methods.py's records, only
    when help is shown (the records import torch, which a plain command line does not need)."""

    def _expand_help(self, action) -> str:
        text = super()._expand_help(action)
        if "{" not in text:
            return text
        from sparsedm.sparse.methods import METHODS, names_and_aliases, paper_methods

        return text.format(
            methods=names_and_aliases(),
            paper_methods=" ".join(paper_methods()),
            paper_names=", ".join(METHODS[m].display_name for m in paper_methods()),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsedm", description="Sparse-to-sparse training of diffusion models.", formatter_class=MethodsHelp
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a denoiser (sparse.method: {methods})", formatter_class=MethodsHelp)
    train.add_argument("config", help="YAML config, e.g. configs/chirodiff_kanjivg_cpu.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sparse.sparsity=0.5 sparse.prune_rate=0.1")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    sample = sub.add_parser("sample", help="sample from a trained run's EMA weights")
    sample.add_argument("run", help="run folder")
    sample.add_argument("--num", type=int, help="number of samples (default: sample.num)")
    sample.add_argument("--steps", type=int, help="denoising steps (default: sample.steps)")
    sample.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: sample.sampler")
    sample.add_argument("--eta", type=float, help="DDIM's eta")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--checkpoint", help="a checkpoint file instead of the newest")
    sample.add_argument("--no-progress", action="store_true")
    _add_sparse_kernels_option(sample)
    sample.set_defaults(func=_sample)

    fid = sub.add_parser("fid", help="FID between two image sets (folders, .npz, or a run's samples .npz)")
    fid.add_argument("path_a", help="a folder of images, a .npz with uint8 'images', or RUN/samples/*.npz")
    fid.add_argument("path_b", help="the same kinds as path_a")
    fid.add_argument(
        "--backend",
        choices=["sparsedm", "torch-fidelity"],
        default="sparsedm",
        help="sparsedm: offline, equal to torch-fidelity; torch-fidelity: the tool itself (needs torchvision)",
    )
    fid.add_argument("--json", action="store_true", help="print a JSON object: fid, n_a, n_b")
    fid.add_argument("--batch-size", type=int, default=50, help="images per Inception pass")
    fid.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    fid.add_argument("--no-progress", action="store_true")
    fid.set_defaults(func=_fid)

    evaluate = sub.add_parser("evaluate", help="FID of a trained run's sparse EMA weights -> RUN/eval.json")
    evaluate.add_argument("run", help="run folder with a finished training (summary.json)")
    _add_eval_options(evaluate, "--")
    evaluate.add_argument(
        "--at-step",
        nargs="+",
        metavar="N",
        help="score the kept checkpoints of these steps (train.keep_steps), or `all` of them not scored yet "
        "[the final step]",
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing scores of the steps")
    evaluate.set_defaults(func=_evaluate)

    sweep = sub.add_parser(
        "sweep",
        help="train and evaluate methods x S x p (x block sizes) x seeds; table and plots",
        formatter_class=MethodsHelp,
    )
    sweep.add_argument("config", help="YAML config, e.g. configs/chirodiff_kanjivg_cpu.yaml")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=2000")
    sweep.add_argument("--out", required=True, help="sweep folder; running again continues it")
    sweep.add_argument(
        "--methods",
        nargs="+",
        help="some of {methods}, or small-dense (Dense narrowed to the non-zero count of each S) (default: {paper_methods})",
    )
    sweep.add_argument("--sparsities", nargs="+", type=float, help="S values (default: 0.1 0.25 0.5 0.75 0.9)")
    sweep.add_argument(
        "--prune-rates", nargs="+", type=float, help="p values of the dynamic methods (default: 0.05 0.1 0.5)"
    )
    sweep.add_argument(
        "--block-sizes",
        nargs="+",
        type=int,
        metavar="B",
        help="b values of the sparse methods' b x b mask tiles, 1 unstructured (sparse.block_size; Dense and "
        "Small-Dense run once), e.g. 1 16 to pair blocks with unstructured by seed (default: the config's)",
    )
    sweep.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per grid point")
    sweep.add_argument("--workers", type=int, default=1, help="runs at a time, each in a single-threaded process (CPU)")
    sweep.add_argument(
        "--shard",
        metavar="K/N",
        help="only slice K of N (K = 0..N-1) of the grid, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
    )
    sweep.add_argument(
        "--list",
        action="store_true",
        help="print every run with its slice of N (from --shard or the launched array), its state and job id",
    )
    sweep.add_argument(
        "--train-only", action="store_true", help="train the runs, score none (the same command without it scores them)"
    )
    launcher = sweep.add_argument_group("submitit launcher (docs/scaling.md)")
    launcher.add_argument(
        "--launcher",
        choices=["slurm", "local"],
        help="submit the grid as one submitit job array (slurm), or run the same tasks on this machine (local)",
    )
    launcher.add_argument("--tasks", type=int, help="array tasks, each a slice K/N of the grid (default: one per run)")
    launcher.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    launcher.add_argument("--time", type=int, help="minutes per task; one stopped by it is requeued (default 240)")
    launcher.add_argument("--cpus-per-task", type=int, help="CPU cores per task (default 1)")
    launcher.add_argument("--gpus-per-task", type=int, help="GPUs per task (default 0)")
    launcher.add_argument("--parallelism", type=int, help="tasks running at once (SLURM's --array=...%%P; default all)")
    _add_eval_options(sweep, "--sample-")
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser("report", help="rebuild a sweep's results.csv, results.md and plots from its finished runs")
    report.add_argument("sweep", help="sweep folder")
    report.set_defaults(func=_report)

    archive = sub.add_parser(
        "archive",
        help="copy a sweep's finished runs without checkpoints or samples (scores, configs, metrics) to a folder; "
        "a sweep continued from that folder skips them",
    )
    archive.add_argument("sweep", help="sweep folder")
    archive.add_argument("dest", help="folder to copy them into (created; an earlier archive of the same sweep grows)")
    archive.set_defaults(func=_archive)

    compare = sub.add_parser(
        "compare", help="each configuration of sweep B against the same one in sweep A, paired by seed (markdown)"
    )
    compare.add_argument("a", help="sweep folder A (the reference, e.g. the grid)")
    compare.add_argument("b", help="sweep folder B (e.g. the same runs trained longer)")
    compare.set_defaults(func=_compare)

    plot = sub.add_parser("plot", help="draw a run's loss curves and per-layer density/exploration (PNG in the run)")
    plot.add_argument("run", help="run folder (while it trains too)")
    plot.set_defaults(func=_plot)

    demo = sub.add_parser("demo", help="{paper_names} at S = 0.5 on KanjiVG, compared by FID")
    demo.add_argument(
        "--out", default="reports/demo", help="report folder (runs in OUT/runs); running again skips finished runs"
    )
    demo.add_argument("--steps", type=int, help="training steps per run (default: the config's)")
    demo.add_argument("overrides", nargs="*", help="more config overrides, e.g. data.cache_dir=/scratch")
    demo.add_argument("--num", type=int, default=200, help="generated samples per run for FID")
    demo.add_argument("--workers", type=int, default=2, help="runs trained side by side, one thread each")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)

    autoencoder = sub.add_parser("train-autoencoder", help="train Latent Diffusion's autoencoder (VQ or KL), dense")
    autoencoder.add_argument("config", help="YAML config, e.g. configs/autoencoder_openmoji_cpu.yaml")
    autoencoder.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 model.kind=kl")
    autoencoder.add_argument(
        "--out", required=True, help="folder for the diffusers autoencoder (autoencoder.path of an ldm config)"
    )
    autoencoder.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    autoencoder.add_argument("--overwrite", action="store_true", help="replace the autoencoder and run in --out")
    autoencoder.add_argument("--no-progress", action="store_true", help="no progress bar")
    autoencoder.set_defaults(func=_train_autoencoder)

    export = sub.add_parser(
        "export", help="write an image run as a diffusers LDMPipeline or DiTPipeline folder (+ masks)"
    )
    export.add_argument("run", help="run folder of a task=ldm or task=dit run")
    export.add_argument("--out", required=True, help="pipeline folder to write")
    export.add_argument("--checkpoint", help="a checkpoint file instead of the newest")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument(
        "--compress", action="store_true", help="also write unet_sparse.safetensors: non-zeros + bit-packed masks"
    )
    export.set_defaults(func=_export)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub look-ups: everything is local
    parser = build_parser()
    # overrides may come after options (`train CFG --out RUN a.b=1`): argparse leaves those over
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    logging.basicConfig(
        level=logging.INFO if not args.debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
        if "torch.distributed" in sys.modules:  # leave a process group (under torchrun) before Python exits
            from sparsedm.runs.distributed import leave_distributed

            leave_distributed()
    except UserError as exc:
        if args.debug:
            raise
        print(f"sparsedm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsedm: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0
