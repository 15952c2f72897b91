"""A sweep: every run of a grid for one config, trained and evaluated, then the paper's table and plots.

    SWEEP/sweep.json   the setup it was started with: the resolved config (less the grid's keys) and the
                       evaluation settings
    SWEEP/runs/NAME/   one run folder per grid point (NAME as rigl-S0.5-p0.1-seed0), ending with eval.json
    SWEEP/results.csv, results.md, fid_vs_sparsity.png, fid_vs_train_flops.png   (report.py)

Running the same command again continues where it stopped: a run with eval.json is skipped, a run with a
summary is only evaluated, an interrupted run resumes from its newest checkpoint (or restarts when it has
none). A sweep folder holds one setup: another config, other overrides or other evaluation settings are
refused, since they would put incomparable numbers in one table. The grid itself may grow.
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from ..config import load_config
from ..errors import UserError
from ..train.checkpoint import latest_checkpoint
from ..train.run_dir import SUMMARY, RunDir
from ..train.trainer import Trainer
from .aggregate import RUNS, read_runs
from .evaluate import EVAL, EvalSettings, evaluate_run, settings_record, write_json_atomically
from .grid import GRID_KEYS, RunSpec, SweepGrid
from .report import Report, build_report

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat if flat else {prefix: tree}


def _setup(config: str, overrides: List[str], settings: EvalSettings) -> dict:
    """What every run of the sweep shares: the resolved config less the grid's keys, and the evaluation."""
    cfg = OmegaConf.to_container(load_config(config, overrides))
    for key in GRID_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        del node[leaf]
    return {"config": cfg, "eval": settings_record(settings)}


def pin_setup(out: Path, setup: dict) -> None:
    """Write SWEEP/sweep.json, or check that the sweep in `out` was started with the same setup."""
    path = out / SWEEP_FILE
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, setup)
        return
    old, new = _flatten(json.loads(path.read_text())), _flatten(setup)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise UserError(
                f"{out} holds a sweep with {key.rstrip('.')}={old.get(key)!r}, not {new.get(key)!r}; "
                "use its config, overrides and evaluation options, or another --out"
            )


def run_one(spec: RunSpec, config: str, overrides: List[str], out: Path, settings: EvalSettings, progress: bool) -> str:
    """Bring one grid point to a finished evaluation; returns what it took: done, evaluated or trained."""
    path = out / RUNS / spec.name
    if (path / EVAL).exists():
        return "done"
    if (path / SUMMARY).exists():
        evaluate_run(path, settings, progress=progress)
        return "evaluated"
    cfg = load_config(config, [*overrides, *spec.overrides()])
    run = RunDir(path)
    resume = run.exists() and latest_checkpoint(run.checkpoints) is not None
    # without a checkpoint an interrupted run has nothing worth keeping: it starts again cleanly
    Trainer(cfg, str(path), resume=resume, overwrite=not resume, progress=progress).fit()
    evaluate_run(path, settings, progress=progress)
    return "trained"


def run_sweep(
    config: str,
    out,
    grid: Optional[SweepGrid] = None,
    overrides: List[str] = (),
    settings: Optional[EvalSettings] = None,
    progress: bool = True,
) -> Tuple[Dict[str, str], Report]:
    """Train and evaluate every run of `grid` not finished yet, then rebuild the report (report.py).

    Returns what each run took (done before, evaluated, trained or failed), by name, and the report (None
    while no run has finished). A run that fails (a diverging loss, say) is logged and the sweep goes on.
    """
    grid, settings, out = grid or SweepGrid(), (settings or EvalSettings()).validate(), Path(out)
    clashes = [o for o in overrides if o.split("=", 1)[0] in GRID_KEYS]
    if clashes:
        raise UserError(f"{' '.join(clashes)}: the grid sets these; use --methods, --sparsities, --prune-rates and --seeds")
    specs = grid.runs()
    pin_setup(out, _setup(config, list(overrides), settings))
    outcomes = {}
    for i, spec in enumerate(specs, 1):
        log.info("sweep [%d/%d] %s", i, len(specs), spec.name)
        try:
            outcomes[spec.name] = run_one(spec, config, list(overrides), out, settings, progress)
        except UserError as error:
            log.error("sweep [%d/%d] %s failed: %s", i, len(specs), spec.name, error)
            outcomes[spec.name] = "failed"
        if outcomes[spec.name] == "done":
            log.info("sweep [%d/%d] %s: finished before, skipped", i, len(specs), spec.name)
    return outcomes, build_report(out) if read_runs(out) else None
