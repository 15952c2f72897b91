"""Fit the tiny LightningModule with SparseTraining under Lightning's DDP on 2 CPU processes (gloo); each rank
writes its masks. Used by test_lightning; Lightning starts the second process by running this file again.

python lightning_script.py OUT
"""

import sys
from pathlib import Path

import torch
from lightning_helpers import TinyModule, loader, trainer

from sparsedm.integrations.lightning import SparseTraining


def main(out: str) -> None:
    callback = SparseTraining(
        dict(method="rigl", sparsity=0.5, prune_rate=0.3, prune_rate_decay="constant", update_interval=3),
        module="model",
    )
    fit = trainer(1, [callback], devices=2, strategy="ddp")
    fit.fit(TinyModule(), loader(batch_size=4))
    engine = callback.engine
    state = {"masks": engine.masks, "step": engine.step, "replaced": (callback.last_update or {}).get("replaced", 0)}
    torch.save(state, Path(out) / f"masks_rank{fit.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
