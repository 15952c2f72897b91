"""ChiroDiff's timestep embedding γ(t): raw random Fourier features of t / T, no learnt layer.

As ChiroDiff's `random_fourier_encoding_dyn` (utils.py:32-35) applied in `on_test_start` (main.py:425-427):
γ(t) = [sin(2π ω τ), cos(2π ω τ)], ω = 4 W with W ~ N(0, 1) fixed at construction (main.py:188), and
τ = t / T for the reference's steps t = 1..T. sparsedm's timesteps are diffusers' 0-based indices (t - 1), so
τ = (index + 1) / T here: the same angle for the same noise level.
"""

import math

import torch
from torch import nn

from sparsedm.errors import UserError


class RandomFourierFeatures(nn.Module):
    """γ(t) = [sin(2π ω τ), cos(2π ω τ)] with τ = (t + 1) / T and fixed frequencies ω ~ N(0, scale²).

    ω is drawn once from the global RNG at construction and kept as a persistent buffer, so it is never
    trained (nor sparsified) but is saved with the weights. The module has no parameters.
    """

    def __init__(self, embed_dim: int, scale: float, num_train_timesteps: int):
        super().__init__()
        if embed_dim < 2 or embed_dim % 2:
            raise UserError(f"time_embed_dim must be an even number >= 2 (sin and cos pairs), got {embed_dim}")
        if scale <= 0:
            raise UserError(f"rff_scale must be > 0 (std of the random frequencies), got {scale}")
        if num_train_timesteps < 1:
            raise UserError(f"num_train_timesteps (T) must be >= 1, got {num_train_timesteps}")
        self.num_train_timesteps = num_train_timesteps  # T
        self.register_buffer("frequencies", torch.randn(embed_dim // 2) * scale)  # ω

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed 0-based timesteps `t` of shape (B,) (integers in [0, T)) as (B, embed_dim)."""
        tau = (t.to(self.frequencies.dtype) + 1) / self.num_train_timesteps
        angles = 2 * math.pi * tau[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
