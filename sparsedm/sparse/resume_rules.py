"""Which `sparse` settings a resumed engine may change: a checkpoint's masks, counts, schedule position and RNG
were made by its own settings, so loading it under other ones would run two configs at once (the masks of
one, the reports of the other). Every field of SparseConfig is refused when it differs, except APPLIED, and
so is another end of the mask updates (t_end as a step: a fraction t_end of another total_steps moves it).
"""

from dataclasses import fields
from enum import Enum

from sparsedm.errors import UserError
from sparsedm.sparse.config import SparseConfig
from sparsedm.sparse.methods import get_method

# fields a resume may change -> why the checkpoint's state is still this config's
APPLIED = {
    # how layers store and compute (compact.py), chosen after the load: the masks, counts and moments are the same
    "kernels": "storage only: checkpoints keep one format in every mode",
}


def saved_config(config: SparseConfig) -> dict:
    """The settings as plain values (enums by name), for a checkpoint read with weights_only=True."""
    return {f.name: _plain(getattr(config, f.name)) for f in fields(config)}


def _plain(value):
    """A plain value; lists and dicts copied, so that the saved state does not change with the live config."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def check_resume(state: dict, config: SparseConfig) -> None:
    """UserError in one line if `config` differs from the checkpoint's settings (its engine `state`) in a field
    a resume may not change. Checkpoints written before the settings were saved name only their method."""
    if not isinstance(state, dict) or "method" not in state or "masks" not in state:
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"the sparse engine was given a state that is not an engine's (no method and masks; it has {keys}); "
            "Accelerate checkpoints saved before the EMA was registered ahead of the engine hold the two the other "
            "way round: load them with that sparsedm version"
        )
    saved = state.get("config", {"method": state["method"]})
    current = saved_config(config)
    for name, old in saved.items():
        if name in APPLIED or name not in current:  # not in current: a setting this version no longer has
            continue
        new = current[name]
        if name == "method":  # an alias names the same method
            old, new = get_method(old).name, get_method(new).name
        if old != new:
            raise UserError(
                f"the checkpoint was trained with sparse.{name}={old}, not {new}; resume with that value or "
                "start a new run"
            )


def check_end_step(state: dict, end_step) -> None:
    """UserError in one line if the checkpoint's updates end at another step than this engine's (a fraction
    t_end of another total_steps). Checkpoints written before the end step was saved are not checked."""
    saved = state.get("end_step")
    if saved is not None and end_step is not None and saved != end_step:
        raise UserError(
            f"the checkpoint's mask updates end at step {saved}, this engine's at {end_step} (sparse.t_end of "
            "another total_steps); resume with the run's total_steps, or give sparse.t_end as a step > 1"
        )
