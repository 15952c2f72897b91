"""Starting, replacing or resuming a run in a folder, and the one list of settings a resumed run may change.

The trainer checks a folder with `prepare_run_dir` before it writes anything; the sweep pins its setup with
the same list (`RESUMABLE_CHANGES`), less the keys that change what a run computes.
"""

import shutil

from sparsedm.config_loader import to_dict
from sparsedm.errors import UserError
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


def prepare_run_dir(run: RunDir, cfg, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; on resume the config must be the run's but for RESUMABLE_CHANGES."""
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
    old, new = _without(to_dict(run.read_config()), RESUMABLE_CHANGES), _without(to_dict(cfg), RESUMABLE_CHANGES)
    if old != new:
        raise UserError(
            f"--resume: the config differs from the one in {run.path / CONFIG}; resume with the run's config "
            f"(only {resumable_keys()} may change)"
        )
