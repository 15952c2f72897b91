"""Tiny models for tests: a few-channel diffusers UNet with attention, a two-block DiT, a small bidirectional GRU, and the
overrides of the tiny ChiroDiff run that the end-to-end tests train on the built-in KanjiVG data in seconds."""

import torch
from torch import nn


def tiny_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )


def tiny_dit():
    """diffusers' DiTTransformer2DModel of one class, hidden 32 in 2 heads, 2 blocks, patch 2 on 4 x 8 x 8 latents
    (16 tokens), torch's initialisation (nothing starts at zero, so every layer has a gradient at once)."""
    from sparsedm.models.dit import DiTConfig, build_dit

    return build_dit(DiTConfig(hidden_size=32, num_layers=2, num_heads=2, zero_init=False), 8, 4)


class TinyGRU(nn.Module):
    """A bidirectional GRU regressor with a `time_embedding` layer, like the ChiroDiff denoiser."""

    def __init__(self, dim=3, hidden=16, layers=2):
        super().__init__()
        self.time_embedding = nn.Sequential(nn.Linear(1, hidden), nn.SiLU())
        self.proj_in = nn.Linear(dim, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.proj_out = nn.Linear(2 * hidden, dim)

    def forward(self, x, t):
        h = self.proj_in(x) + self.time_embedding(t.float()[:, None, None] / 1000)
        return self.proj_out(self.gru(h)[0])


def unet_loss(model, generator):
    x = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (4,), generator=generator)
    return (model(x, t).sample - x).pow(2).mean()


def gru_loss(model, generator):
    x = torch.randn(4, 6, 3, generator=generator)
    t = torch.randint(0, 1000, (4,), generator=generator)
    return (model(x, t) - x.flip(1)).pow(2).mean()


def sparse_step(model, loss_fn, engine, optimizer, generator):
    """One training step with the engine's two calls; returns the engine's update statistics or None."""
    optimizer.zero_grad()
    loss_fn(model, generator).backward()
    engine.after_backward()
    optimizer.step()
    return engine.after_optimizer_step()


def tiny_chirodiff(cache=None, hidden_size: int = 16, batch_size: int = 16) -> list:
    """Overrides of configs/chirodiff_kanjivg_cpu.yaml for a run of seconds: 240 short characters, a small GRU.
    Tests add the steps, methods and intervals they check; `cache`: the data cache folder (None: the config's)."""
    return [
        *([f"data.cache_dir={cache}"] if cache is not None else []),
        "data.max_items=240",
        "data.max_points=60",
        "data.max_strokes=8",
        "data.spacing=0.1",
        f"model.hidden_size={hidden_size}",
        f"train.batch_size={batch_size}",
    ]
