"""`sparsedm demo`: the four methods on the built-in KanjiVG data at S = 0.5, compared by FID.

A one-seed sweep (sweep.py) of the small CPU config: Dense, Static-DM, RigL-DM and MagRan-DM, each trained,
sampled from its sparse EMA weights and scored by FID against the validation split. Running it again skips
the finished runs. The report folder holds the sweep's table and plots plus

    OUT/samples_<method>.png   the first evaluation samples of each method
    OUT/samples_S0.5.png       a few samples of every method from the same noise, one labelled row each (report)
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from sparsedm.config import load_config
from sparsedm.eval.evaluate import EVAL_SAMPLES, EvalSettings
from sparsedm.experiments.aggregate import RUNS, read_runs
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.report import Report
from sparsedm.experiments.sweep import run_sweep
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse.methods import method_order, paper_methods


@dataclass
class DemoSettings:
    config: str = "configs/chirodiff_kanjivg_cpu.yaml"  # small ChiroDiff on 2,000 built-in KanjiVG characters
    out: str = "reports/demo"  # report folder; its runs go to OUT/runs/
    steps: Optional[int] = None  # training steps per run; None = the config's train.steps
    num: int = 200  # generated samples per run for FID (against the 170 validation sketches)
    sparsity: float = 0.5  # S of the three sparse methods; p is the config's sparse.prune_rate
    overrides: List[str] = field(default_factory=list)  # more config overrides, e.g. data.cache_dir=/scratch
    # runs trained side by side, one torch thread each: this small GRU barely uses a second thread, and on a
    # busy 2-core machine a second thread spins at every barrier (measured there: 0.29 s/step on 1 thread, 2.4 on 2)
    workers: int = 2


def run_demo(settings: Optional[DemoSettings] = None, progress: bool = True) -> Tuple[Dict[str, str], Optional[Report]]:
    """Run (or continue) the demo; returns what each run took and the report, as `run_sweep` does."""
    settings = settings or DemoSettings()
    torch.set_num_threads(1)  # this process's share: the reference statistics, and the runs when workers=1
    overrides = list(settings.overrides) + ([f"train.steps={settings.steps}"] if settings.steps is not None else [])
    prune_rate = load_config(settings.config, overrides).sparse.prune_rate
    grid = SweepGrid(methods=paper_methods(), sparsities=[settings.sparsity], prune_rates=[prune_rate], seeds=1)
    outcomes, report = run_sweep(
        settings.config,
        settings.out,
        grid,
        overrides,
        EvalSettings(num=settings.num),
        progress,
        workers=settings.workers,
    )
    if report is not None:
        report.files += _sample_pictures(Path(settings.out))
    return outcomes, report


def _sample_pictures(out: Path) -> list:
    """Copy each method's evaluation sample grid into the report (samples_S<S>.png comes with the report)."""
    files = []
    for record in sorted(read_runs(out), key=lambda r: (method_order(r["method"]), r["run"])):
        files.append(out / f"samples_{record['run']}.png")
        shutil.copyfile(RunDir(out / RUNS / record["run"]).samples / f"{EVAL_SAMPLES}.png", files[-1])
    return files
