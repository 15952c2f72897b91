"""Checks of a `train:` block that more than one config schema (denoiser, autoencoder) runs: its ranges in
`__post_init__`, and, while loading, which of its two run lengths (train.steps, train.epochs) the user chose."""

import logging
from typing import List, Tuple

from omegaconf import DictConfig, OmegaConf

from sparsedm.errors import UserError

log = logging.getLogger(__name__)

RUN_LENGTHS = ("steps", "epochs")  # two ways to say how long a run is: exactly one is set (not null)


def check_run_length(train) -> None:
    """Steps or epochs, batch size and learning rate of a `train:` block (denoiser or autoencoder)."""
    if train.steps is not None and train.epochs is not None:
        raise UserError(
            f"train.steps={train.steps} and train.epochs={train.epochs} are both set; set one, and the other to null"
        )
    if train.steps is None and train.epochs is None:
        raise UserError("train.steps and train.epochs are both null; set one (e.g. train.steps=2000)")
    if train.steps is not None and train.steps < 1:
        raise UserError(f"train.steps={train.steps} must be >= 1")
    if train.epochs is not None and train.epochs < 1:
        raise UserError(f"train.epochs={train.epochs} must be >= 1 (or null to use train.steps)")
    if train.batch_size < 1:
        raise UserError(f"train.batch_size={train.batch_size} must be >= 1")
    if train.lr <= 0:
        raise UserError(f"train.lr={train.lr} must be > 0")


def choose_run_length(sources: List[Tuple[str, DictConfig]]) -> DictConfig:
    """Of train.steps and train.epochs, the one set by the more specific source wins, and a part to merge last
    sets the other to null; both set by one source is refused.

    `sources` are (name, config) from the least specific (the schema's defaults) to the most (the command
    line): a file setting `epochs` replaces the default `steps`, and `train.steps=N` on the command line
    replaces a file's `epochs` (the log says so: it is the user's choice, not a silent one)."""
    chosen = {}  # key -> (rank of the source that last mentions it, its name, its value)
    for rank, (name, cfg) in enumerate(sources):
        train = cfg.get("train") if isinstance(cfg.get("train"), DictConfig) else {}
        both = [train.get(key) for key in RUN_LENGTHS]
        if rank > 0 and None not in both:
            raise UserError(
                f"{name} sets both train.steps={both[0]} and train.epochs={both[1]}; set one (train.epochs=null to count "
                "train.steps)"
            )
        chosen.update({key: (rank, name, train.get(key)) for key in RUN_LENGTHS if key in train})
    if any(chosen[key][2] is None for key in RUN_LENGTHS):
        return OmegaConf.create()
    winner = max(RUN_LENGTHS, key=lambda key: chosen[key][0])  # one source never sets both, so ranks differ
    loser = next(key for key in RUN_LENGTHS if key != winner)
    if chosen[loser][0] > 0:  # both the user's: say which one is used
        (_, winner_from, winner_value), (_, loser_from, loser_value) = chosen[winner], chosen[loser]
        log.info(
            "train.%s=%s from %s replaces train.%s=%s of %s",
            winner,
            winner_value,
            winner_from,
            loser,
            loser_value,
            loser_from,
        )
    return OmegaConf.create({"train": {loser: None}})
