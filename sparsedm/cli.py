"""The `sparsedm` command line: train and sample (more commands join as the project grows)."""

import argparse
import logging
import os
import sys

from .errors import UserError


def _train(args) -> None:
    from .config import load_config
    from .train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    summary = Trainer(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress).fit()
    if summary:
        print(
            f"{summary['method']}: steps {summary['steps']}, loss {summary['loss_final']:.4f}, val loss {summary['val_loss_final']:.4f}, "
            f"non-zero params {summary['params_nonzero']:,}/{summary['params_total']:,}, "
            f"sparse/dense forward FLOPs {summary['flops_forward_sparse'] / summary['flops_forward_dense']:.3f} -> {args.out}"
        )


def _sample(args) -> None:
    from .sampling import sample_run

    out = sample_run(args.run, num=args.num, steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                     checkpoint=args.checkpoint, progress=not args.no_progress)
    print(f"samples -> {out / 'samples.npz'}, {out / 'samples.png'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsedm", description="Sparse-to-sparse training of diffusion models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a denoiser (dense, static, rigl or magran)")
    train.add_argument("config", help="YAML config, e.g. configs/chirodiff_kanjivg_cpu.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sparse.method=rigl sparse.sparsity=0.5")
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
    sample.set_defaults(func=_sample)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub look-ups: everything is local
    parser = build_parser()
    # overrides may come after options (`train CFG --out RUN a.b=1`): argparse leaves those over
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    logging.basicConfig(level=logging.INFO if not args.debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"sparsedm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsedm: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0
