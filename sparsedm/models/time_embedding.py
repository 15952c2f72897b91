"""ChiroDiff's timestep embedding: random Fourier features of t / T followed by a small MLP."""

import math

import torch
from torch import nn

from sparsedm.errors import UserError


class RandomFourierFeatures(nn.Module):
    """γ(t) = MLP([sin(2π ω τ), cos(2π ω τ)]) with τ = t / T and fixed frequencies ω ~ N(0, scale²).

    ω is drawn once from the global RNG at construction and kept as a persistent buffer, so it is never
    trained (nor sparsified) but is saved with the weights. ChiroDiff uses scale 4 on τ ∈ (0, 1]; dividing
    by T keeps the angles in that range for any integer timesteps 0..T-1.
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
        self.mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps `t` of shape (B,) (integers in [0, T)) as (B, embed_dim)."""
        tau = t.to(self.frequencies.dtype) / self.num_train_timesteps
        angles = 2 * math.pi * tau[:, None] * self.frequencies[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
