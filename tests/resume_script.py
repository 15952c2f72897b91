"""Train a tiny sparse model for a range of steps, optionally from a checkpoint; used by test_sparse_resume.

python resume_script.py METHOD START END OUT [CHECKPOINT]
"""

import sys

import torch
from tiny_models import TinyGRU, gru_loss

from sparsedm.sparse import EMA, SparseConfig, SparseEngine

TOTAL = 14


def main(method, start, end, out, checkpoint=None):
    torch.manual_seed(0)
    model = TinyGRU()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    ema = EMA(model, decay=0.9)
    config = SparseConfig(
        method=method, sparsity=0.6, prune_rate=0.4, update_interval=4, t_end=1.0, grad_accumulation=2
    )
    engine = SparseEngine(model, optimizer, config, total_steps=TOTAL, ema=ema)
    if checkpoint:
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        engine.load_state_dict(state["engine"])
    for step in range(start, end):
        optimizer.zero_grad()
        gru_loss(model, torch.Generator().manual_seed(1000 + step)).backward()
        engine.after_backward()
        optimizer.step()
        engine.after_optimizer_step()
        ema.update(model)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "engine": engine.state_dict(),
        },
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
