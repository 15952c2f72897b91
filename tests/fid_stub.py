"""A cheap stand-in for the FID Inception network, for tests of the code around FID (the CLI, evaluation,
sweeps, the demo) that need not pay for the real network's 6-12 images/s.

Its features are the grey values mean-pooled to 4 x 4, so FIDs can be recomputed by hand. Use it only with a
temporary `data.cache_dir`: cached reference statistics do not record which network made them.
"""

import torch
import torch.nn.functional as F

POOLED_SIDE = 4


class PooledPixels(torch.nn.Module):
    num_features = POOLED_SIDE * POOLED_SIDE

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.float().mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(grey, POOLED_SIDE).flatten(1)


def use_pooled_pixels(monkeypatch) -> None:
    monkeypatch.setattr("sparsedm.eval.fid.load_inception", lambda device="cpu": PooledPixels())
