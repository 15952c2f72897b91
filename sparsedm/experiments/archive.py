"""Keep a sweep's results without its weights: the finished runs' small files, copied to another folder.

    DEST/sweep.json              the sweep's setup (so a sweep continued in DEST refuses another setup)
    DEST/samples_S<S>.png        the sample pictures of the last report (they need the runs' sample arrays)
    DEST/runs/NAME/              for every finished run (every kept step scored): config.yaml, summary.json,
                                 eval.json, eval/ and metrics.jsonl; no checkpoints, samples or TensorBoard files

About 100 kB a run (90-130 kB for a 12,000-step ChiroDiff run scored at 3 steps) instead of megabytes, so a
long study can be committed as it goes and continued on another machine: copy DEST back into a sweep folder
and run the same `sparsedm sweep` command; a finished run without its checkpoints is skipped (sweep.py), the
others are trained. `sparsedm report DEST` rebuilds the tables and plots from the kept files. Runs that are not finished are left out, and nothing in DEST is ever deleted.
"""

import shutil
from pathlib import Path
from typing import List, Tuple

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import RUNS
from sparsedm.experiments.sweep import SWEEP_FILE, run_state
from sparsedm.runs.run_dir import CONFIG, EVAL, EVAL_STEPS, METRICS, SUMMARY

KEPT_FILES = (CONFIG, SUMMARY, EVAL, METRICS)
KEPT_FOLDERS = (EVAL_STEPS,)
PICTURES = "samples_S*.png"


def archive_sweep(sweep, dest) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Copy the finished runs of `sweep` into `dest` (files above); returns (kept names, [(left-out name, state)])."""
    sweep, dest = Path(sweep), Path(dest)
    if not (sweep / SWEEP_FILE).is_file():
        raise UserError(f"{sweep} is not a sweep folder (no {SWEEP_FILE}); give the --out of a `sparsedm sweep`")
    if dest.resolve() == sweep.resolve() or sweep.resolve() in dest.resolve().parents:
        raise UserError(f"{dest} is inside the sweep {sweep}; archive it to a folder outside it")
    if (dest / SWEEP_FILE).is_file() and (dest / SWEEP_FILE).read_bytes() != (sweep / SWEEP_FILE).read_bytes():
        raise UserError(
            f"{dest} holds another sweep's runs ({dest / SWEEP_FILE} differs from {sweep / SWEEP_FILE}); "
            "archive to an empty folder or to the archive of this same sweep"
        )
    kept, left_out = [], []
    names = sorted(path.name for path in (sweep / RUNS).iterdir() if path.is_dir()) if (sweep / RUNS).is_dir() else []
    for name in names:
        state = run_state(sweep, name)  # the sweep's own rule of "finished"
        if state != "done":
            left_out.append((name, state))
            continue
        source, target = sweep / RUNS / name, dest / RUNS / name
        target.mkdir(parents=True, exist_ok=True)
        for file in KEPT_FILES:
            if (source / file).is_file():
                shutil.copy2(source / file, target / file)
        for folder in KEPT_FOLDERS:
            if (source / folder).is_dir():
                shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
        kept.append(name)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sweep / SWEEP_FILE, dest / SWEEP_FILE)
    for picture in sorted(sweep.glob(PICTURES)):
        shutil.copy2(picture, dest / picture.name)
    return kept, left_out
