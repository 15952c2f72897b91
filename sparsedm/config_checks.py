"""Range checks that more than one config schema runs in its `__post_init__`."""

from sparsedm.errors import UserError


def check_run_length(train) -> None:
    """Steps or epochs, batch size and learning rate of a `train:` block (denoiser or autoencoder)."""
    if train.steps < 1 and not train.epochs:
        raise UserError(f"train.steps={train.steps} must be >= 1")
    if train.epochs is not None and train.epochs < 1:
        raise UserError(f"train.epochs={train.epochs} must be >= 1 (or null to use train.steps)")
    if train.batch_size < 1:
        raise UserError(f"train.batch_size={train.batch_size} must be >= 1")
    if train.lr <= 0:
        raise UserError(f"train.lr={train.lr} must be > 0")
