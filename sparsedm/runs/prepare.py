"""Starting, replacing or resuming a run in a folder (one stopped before its first checkpoint resumes from step
0), and the one list of settings a resumed run may change.

The trainer checks a folder with `prepare_run_dir` before it writes anything; the sweep pins its setup with
the same list (`RESUMABLE_CHANGES`), less the keys that change what a run computes.
"""

import logging
import shutil

from sparsedm.config_loader import to_dict
from sparsedm.errors import UserError
from sparsedm.runs.checkpoint import latest_checkpoint
from sparsedm.runs.files import writing
from sparsedm.runs.run_dir import (
    CHECKPOINTS,
    CONFIG,
    EVAL,
    EVAL_STEPS,
    METRICS,
    SAMPLES,
    SUMMARY,
    TENSORBOARD,
    RunDir,
)

log = logging.getLogger(__name__)

# keys a resumed run may change -> whether a sweep, which compares its runs, keeps them pinned: those that change
# what a run computes or which of its steps are scored
RESUMABLE_CHANGES = {
    "train.steps": True,  # moves t_end and the cosine p_t (the trainer warns)
    "train.stop_at": False,
    "train.log_to": False,
    "train.sample_every": False,
    "train.compress_checkpoints": False,
    "train.val_every": False,
    "train.keep_steps": True,  # what is kept to be scored: a sweep scores all its runs at the same steps
    "sparse.kernels": True,  # checkpoints keep one format; sums in another order change the rounding
}


def resumable_keys() -> str:
    """ "train.steps, train.stop_at, ... and sparse.kernels": for messages."""
    keys = list(RESUMABLE_CHANGES)
    return ", ".join(keys[:-1]) + " and " + keys[-1]


def _without(config: dict, keys) -> dict:
    config = {section: dict(value) if isinstance(value, dict) else value for section, value in config.items()}
    for key in keys:
        section, _, name = key.partition(".")
        if isinstance(config.get(section), dict):
            config[section].pop(name, None)
    return config


def without_free_keys(config: dict) -> dict:
    """A plain config less the keys whose change leaves a run's results alone (what a sweep pins)."""
    return _without(config, [key for key, pinned in RESUMABLE_CHANGES.items() if not pinned])


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return flat


def _check_same_run(run: RunDir, cfg) -> None:
    """The run's config.yaml and `cfg` agree but for RESUMABLE_CHANGES; else the first key that differs."""
    old = _flat(_without(to_dict(run.read_config()), RESUMABLE_CHANGES))
    new = _flat(_without(to_dict(cfg), RESUMABLE_CHANGES))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            no_checkpoint = latest_checkpoint(run.checkpoints) is None
            raise UserError(
                f"--resume: {key}={new.get(key)} differs from the run's {old.get(key)} in {run.path / CONFIG}; "
                f"resume with the run's config (only {resumable_keys()} may change)"
                + (
                    ", or replace it with --overwrite: it has no checkpoint, so nothing is lost"
                    if no_checkpoint
                    else ""
                )
            )


def prepare_run_dir(run: RunDir, cfg, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; on resume the config must be the run's but for RESUMABLE_CHANGES.

    A run stopped before its first checkpoint (a job killed early) resumes from step 0: nothing was kept, so the
    logs it left go and the trainer starts it again, with the same check of its config."""
    if not run.exists():
        if resume:
            raise UserError(f"--resume: {run.path} holds no run to resume (no {CONFIG}); drop --resume to start one")
        return
    if overwrite:
        with writing():
            for name in (CHECKPOINTS, SAMPLES, TENSORBOARD, EVAL_STEPS):
                shutil.rmtree(run.path / name, ignore_errors=True)
            for name in (CONFIG, METRICS, SUMMARY, EVAL):
                (run.path / name).unlink(missing_ok=True)
        return
    if not resume:
        raise UserError(f"{run.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
    _check_same_run(run, cfg)
    if latest_checkpoint(run.checkpoints) is None:
        if (run.path / SUMMARY).exists():  # finished, then its checkpoints deleted: training again would replace it
            raise UserError(
                f"--resume: {run.path} holds a finished run ({SUMMARY}) without checkpoints; nothing to continue "
                "from: train it again with --overwrite"
            )
        log.info("--resume: %s has no checkpoint yet (it stopped before its first): training from step 0", run.path)
        with writing():
            shutil.rmtree(run.path / TENSORBOARD, ignore_errors=True)
            (run.path / METRICS).unlink(missing_ok=True)
