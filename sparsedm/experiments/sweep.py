"""A sweep: every run of a grid for one config, trained and evaluated, then the paper's table and plots.

    SWEEP/sweep.json   the setup it was started with: the resolved config (less the grid's keys) and the
                       evaluation settings
    SWEEP/runs/NAME/   one run folder per grid point (NAME as rigl-S0.5-p0.1-seed0, rigl-S0.5-p0.1-b16-seed0 with
                       16 x 16 tiles: grid.py), ending with eval.json
    SWEEP/runs/NAME.lock   while a process trains or evaluates NAME (shards.py)
    SWEEP/results.csv, results.md, fid_vs_sparsity.png, fid_vs_train_flops.png   (report.py)

Running the same command again continues where it stopped: a run with every kept step scored (eval.json and
RUN/eval/, see `train.keep_steps`) is skipped, a run with a summary is only evaluated, an interrupted run resumes from its newest checkpoint (or restarts when it has
none). A sweep folder holds one setup: another config, other overrides or other evaluation settings are
refused, since they would put incomparable numbers in one table. The grid itself may grow.

`shard=(K, N)` takes only slice K of N of the grid (shards.py): N jobs of a cluster array fill one sweep
folder together, each run claimed by a lock file, and `sparsedm report SWEEP` collects what has finished.
"""

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sparsedm.config import load_config
from sparsedm.config_loader import to_dict
from sparsedm.errors import UserError
from sparsedm.eval.evaluate import (
    EVAL,
    EvalSettings,
    evaluate_steps,
    reference_features,
    reference_statistics,
    settings_record,
    unscored_steps,
    write_json_atomically,
)
from sparsedm.experiments.aggregate import RUNS, SWEEP_FILE, SWEEP_FIX, read_runs
from sparsedm.experiments.grid import GRID_KEYS, GRID_OPTIONS, RunSpec, SweepGrid
from sparsedm.experiments.parallel import run_in_workers
from sparsedm.experiments.report import Report, build_report
from sparsedm.experiments.shards import claim, holder, in_slice, is_stale, lock_path, slice_of
from sparsedm.runs.checkpoint import latest_checkpoint
from sparsedm.runs.distributed import DistInfo, resolve_device
from sparsedm.runs.files import read_json, writing
from sparsedm.runs.prepare import without_free_keys
from sparsedm.runs.run_dir import METRICS, SUMMARY, RunDir
from sparsedm.tasks import build_task
from sparsedm.train.trainer import Trainer

log = logging.getLogger(__name__)


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat if flat else {prefix: tree}


def sweep_setup(config: str, overrides: List[str], settings: EvalSettings) -> dict:
    """What every run of the sweep shares: the resolved config less the grid's keys, and the evaluation."""
    cfg = to_dict(load_config(config, overrides))
    for key in GRID_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        del node[leaf]
    return {"config": without_free_keys(cfg), "eval": settings_record(settings)}


def resolve_grid(grid: SweepGrid, config: str, overrides: List[str]) -> SweepGrid:
    """`grid`, its block sizes the config's sparse.block_size where it names none (--block-sizes left out)."""
    if grid.block_sizes is not None:
        return grid
    return replace(grid, block_sizes=[load_config(config, overrides).sparse.block_size])


def pin_setup(out: Path, setup: dict) -> None:
    """Write SWEEP/sweep.json, or check that the sweep in `out` was started with the same setup."""
    path = out / SWEEP_FILE
    if not path.exists():
        with writing():
            out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, setup)
        return
    old = read_json(path, SWEEP_FIX, {"config": dict, "eval": dict})
    if isinstance(old["config"].get("train"), dict):  # a sweep started when fewer keys were free pinned more
        old["config"] = without_free_keys(old["config"])
    sparse = old["config"].get("sparse")
    # a sweep started before sparse.block_size joined the grid pinned it; at 1 its runs are the grid's unstructured
    # ones by name too (a larger b is refused below: its runs' names lack the -b suffix)
    if isinstance(sparse, dict) and sparse.get("block_size") == 1:
        del sparse["block_size"]
    old, new = _flatten(old), _flatten(setup)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise UserError(
                f"{out} holds a sweep with {key.rstrip('.')}={old.get(key)!r}, not {new.get(key)!r}; "
                "use its config, overrides and evaluation options, or another --out"
            )


def run_one(
    spec: RunSpec,
    config: str,
    overrides: List[str],
    out: Path,
    settings: EvalSettings,
    progress: bool,
    train_only: bool = False,
) -> str:
    """Bring one grid point to a finished evaluation (with `train_only`, to a finished training); returns what
    it took: done, evaluated, trained, stopped (at train.stop_at, with a checkpoint) or busy (another process
    holds its lock). A Ctrl-C that stopped training stops the sweep too."""
    if _finished(out / RUNS / spec.name, train_only):
        return "done"
    with claim(out, spec.name) as claimed:
        return _finish(spec, config, overrides, out, settings, progress, train_only) if claimed else "busy"


def _finished(path: Path, train_only: bool) -> bool:
    """Trained (with `train_only`), or trained and every kept step scored (evaluate.unscored_steps)."""
    if train_only:
        return (path / SUMMARY).exists()
    return (path / EVAL).exists() and not unscored_steps(path)


def _finish(
    spec: RunSpec,
    config: str,
    overrides: List[str],
    out: Path,
    settings: EvalSettings,
    progress: bool,
    train_only: bool,
) -> str:
    path = out / RUNS / spec.name
    if _finished(path, train_only):  # finished by another process between the listing and the claim
        return "done"
    if not (path / SUMMARY).exists():
        cfg = load_config(config, [*overrides, *spec.overrides()])
        run = RunDir(path)
        resume = run.exists() and latest_checkpoint(run.checkpoints) is not None
        # without a checkpoint an interrupted run has nothing worth keeping: it starts again cleanly
        trainer = Trainer(cfg, str(path), resume=resume, overwrite=not resume, progress=progress)
        if trainer.fit() is None:
            if trainer.stop_requested:
                raise KeyboardInterrupt
            return "stopped"
        if not train_only:  # scores of an earlier training of this folder, if any, are stale
            evaluate_steps(path, "all", settings, overwrite=True, progress=progress)
        return "trained"
    evaluate_steps(path, "all", settings, progress=progress)
    return "evaluated"


def steps_done(run_path: Path) -> int:
    """The last training step a run logged (0 before its first log line)."""
    try:
        lines = (run_path / METRICS).read_text().splitlines()
    except FileNotFoundError:
        return 0
    step = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line being written by a worker right now
            continue
        if "loss" in record:
            step = max(step, record["step"])
    return step


def run_sweep(
    config: str,
    out,
    grid: Optional[SweepGrid] = None,
    overrides: List[str] = (),
    settings: Optional[EvalSettings] = None,
    progress: bool = True,
    workers: int = 1,
    shard: Optional[Tuple[int, int]] = None,
    train_only: bool = False,
) -> Tuple[Dict[str, str], Optional[Report]]:
    """Train and evaluate every run of `grid` (of its slice K of N with `shard`) not finished yet, then rebuild
    the report (report.py) from every finished run in `out`. With `train_only` runs are trained but not
    evaluated (a later sweep without it evaluates them), for example to train on one machine and score on another.

    `workers` > 1 runs that many at a time, each in its own single-threaded process (parallel.py). Returns
    what each run took (done, evaluated, trained, stopped or failed; see `run_one`), by name, and the report
    (None while no run has finished). A run that fails (a diverging loss, say) is logged and the sweep goes on.
    """
    grid, settings, out = grid or SweepGrid(), (settings or EvalSettings()).validate(), Path(out)
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    clashes = [o for o in overrides if o.split("=", 1)[0] in GRID_KEYS]
    if clashes:
        raise UserError(f"{' '.join(clashes)}: the grid sets these; use {GRID_OPTIONS}")
    grid = resolve_grid(grid, config, overrides)
    overrides, specs = list(overrides), in_slice(grid.runs(), shard)
    pin_setup(out, sweep_setup(config, overrides, settings))
    outcomes = {spec.name: "done" for spec in specs if _finished(out / RUNS / spec.name, train_only)}
    todo = [spec for spec in specs if spec.name not in outcomes]
    part = f" slice {shard[0]}/{shard[1]}" if shard else ""
    log.info("sweep %s%s: %d runs, %d finished before", out, part, len(specs), len(outcomes))
    if workers > 1 and len(todo) > 1:
        outcomes.update(_run_in_workers(todo, config, overrides, out, settings, progress, workers, train_only))
    else:
        outcomes.update(_run_in_turn(todo, config, overrides, out, settings, progress, train_only))
    outcomes = {spec.name: outcomes[spec.name] for spec in specs}
    return outcomes, build_report(out) if read_runs(out) else None


def run_state(out: Path, name: str) -> str:
    """Where a run of a sweep stands, from its files: done, running (and where), trained, interrupted or to do."""
    path = out / RUNS / name
    if _finished(path, train_only=False):
        return "done"
    lock = lock_path(out, name)
    owner = holder(lock)
    if owner is not None and not is_stale(lock, owner):  # a killed job's lock: below
        return f"running on {owner.get('host', '?')} (pid {owner.get('pid', '?')})"
    if (path / SUMMARY).exists():
        return f"trained, {len(unscored_steps(path))} kept steps to score"
    if RunDir(path).exists():
        return f"interrupted at step {steps_done(path)}"
    return "to do"


def list_sweep(out, grid: SweepGrid, shards: int = 1) -> List[Tuple[int, str, str]]:
    """(slice, name, state) of every run of the grid, in the grid's order."""
    return [(slice_of(i, shards), spec.name, run_state(Path(out), spec.name)) for i, spec in enumerate(grid.runs())]


def _run_in_turn(
    todo: List[RunSpec],
    config: str,
    overrides: List[str],
    out: Path,
    settings: EvalSettings,
    progress: bool,
    train_only: bool,
) -> Dict[str, str]:
    outcomes = {}
    for i, spec in enumerate(todo, 1):
        log.info("sweep [%d/%d] %s", i, len(todo), spec.name)
        try:
            outcomes[spec.name] = run_one(spec, config, overrides, out, settings, progress, train_only)
        except UserError as error:
            log.error("sweep: %s failed: %s", spec.name, error)
            outcomes[spec.name] = "failed"
    return outcomes


def _run_in_workers(
    todo: List[RunSpec],
    config: str,
    overrides: List[str],
    out: Path,
    settings: EvalSettings,
    progress: bool,
    workers: int,
    train_only: bool,
) -> Dict[str, str]:
    cfg = load_config(config, overrides)
    task, device = build_task(cfg), resolve_device(cfg.train.device, DistInfo())
    # the data caches (an LDM config's encoded latents) and the references first, or every worker would fill them
    # at once
    task.load_data(progress, device)
    if not train_only:
        reference_statistics(task, settings, device, progress)
        if settings.memorisation:
            for split in ("train", "val"):
                reference_features(task, split, settings, device, progress)
    results = run_in_workers(
        run_one,
        {spec.name: (spec, config, overrides, out, settings, False, train_only) for spec in todo},
        workers,
        progress_count=lambda: sum(steps_done(out / RUNS / spec.name) for spec in todo),
        total=None if cfg.train.epochs else cfg.train.steps * len(todo),
        desc=f"train {len(todo)} runs, {workers} at a time (steps)",
        progress=progress,
    )
    outcomes = {}
    for name, result in results.items():
        if isinstance(result, UserError):
            log.error("sweep: %s failed: %s", name, result)
            outcomes[name] = "failed"
        elif isinstance(result, BaseException):
            raise result
        else:
            outcomes[name] = result
    return outcomes
