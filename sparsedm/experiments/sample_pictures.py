"""Pictures of a sweep's samples: the first evaluation samples of runs, one labelled row per run.

Every run of one sweep is evaluated with the same sampling seed, sampler and steps (the report refuses a
sweep whose runs differ: aggregate.PROTOCOL), so row k of each run starts from the same noise and the rows
differ only by the trained weights. The report draws, for each S of the sweep,

    SWEEP/samples_S<S>.png   Dense, then every sparse method (and p) at that S; each at its lowest seed
"""

import logging
from pathlib import Path
from typing import Dict, List

import numpy as np

from sparsedm.config import read_run_config
from sparsedm.errors import UserError
from sparsedm.eval.evaluate import EVAL_SAMPLES
from sparsedm.experiments.aggregate import RUNS, config_order, group_key
from sparsedm.experiments.baselines import get_method, has_sparsity, is_dense
from sparsedm.experiments.plots import sample_rows
from sparsedm.runs.files import read_npz
from sparsedm.runs.run_dir import RunDir
from sparsedm.tasks import build_task

log = logging.getLogger(__name__)

ROW_SAMPLES = 8  # samples per row


def run_label(record: dict) -> str:
    """e.g. "Dense (seed 0)", "RigL-DM S=0.9 p=0.05 (seed 0)", "RigL-DM S=0.9 p=0.05 b=16 (seed 0)" (masks of
    16 x 16 tiles), "Small-Dense S=0.5 (seed 0)"."""
    name, sparsity, prune_rate, block_size = group_key(record)
    label = get_method(name).display_name
    if sparsity is not None:
        label += f" S={sparsity:g}"
    if prune_rate is not None:
        label += f" p={prune_rate:g}"
    if block_size is not None and block_size > 1:
        label += f" b={block_size}"
    return label + (f" (seed {record['seed']})" if record.get("seed") is not None else "")


def first_samples(sweep_dir: Path, record: dict, n: int = ROW_SAMPLES) -> np.ndarray:
    """The run's first `n` evaluation samples as uint8 N x H x W x C pictures, drawn as FID saw them."""
    run = RunDir(Path(sweep_dir) / RUNS / record["run"])
    samples = read_npz(
        run.samples / f"{EVAL_SAMPLES}.npz", "evaluate the run again with `sparsedm evaluate RUN --overwrite`"
    )
    first = {name: array[:n] for name, array in samples.items()}
    return build_task(read_run_config(run)).to_images(first)


def _lowest_seed(records: List[dict]) -> Dict[tuple, dict]:
    """The record with the lowest seed of each (method, S, p, b), in the table's order."""
    chosen = {}
    for record in sorted(records, key=lambda r: (r.get("seed") is None, r.get("seed") or 0, r["run"])):
        chosen.setdefault(group_key(record), record)
    return dict(sorted(chosen.items(), key=lambda item: config_order(item[0])))


def rows_at_sparsity(records: List[dict], sparsity: float) -> List[dict]:
    """Dense, Small-Dense and each sparse (method, p, b) at S = `sparsity`, at its lowest seed: the rows of
    samples_S<S>.png."""
    picked = _lowest_seed(records)
    return [record for (method, s, *_), record in picked.items() if is_dense(method) or s == sparsity]


def sparsity_pictures(sweep_dir, records: List[dict]) -> List[Path]:
    """samples_S<S>.png for each S among the sparse runs; a run whose samples cannot be read is left out, logged."""
    sweep_dir = Path(sweep_dir)
    levels = sorted({group_key(r)[1] for r in records if has_sparsity(group_key(r)[0])})
    files, drawn = [], {}  # drawn: each run's pictures, read once (Dense is in every picture)
    for sparsity in levels:
        strips: Dict[str, np.ndarray] = {}
        for record in rows_at_sparsity(records, sparsity):
            try:
                if record["run"] not in drawn:
                    drawn[record["run"]] = first_samples(sweep_dir, record)
                strips[run_label(record)] = drawn[record["run"]]
            except UserError as error:  # a picture must not cost the table: say what is missing and go on
                log.warning("samples of %s left out of samples_S%g.png: %s", record["run"], sparsity, error)
        if strips:
            files.append(sample_rows(strips, sweep_dir / f"samples_S{sparsity:g}.png"))
    return files
