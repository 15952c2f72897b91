"""ChiroDiff's denoiser (Das et al., ICLR 2023): a bidirectional GRU over a sequence of pen points.

Each point's features are concatenated with the timestep embedding γ(t) and read by a stacked
bidirectional GRU; a linear layer maps [GRU state, γ(t)] of every point to ε̂ for that point, as in
ChiroDiff's `ScoreFunc`. Padded sequences are packed, so padding never reaches the real points.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sparsedm.errors import UserError
from sparsedm.models.time_embedding import RandomFourierFeatures


@dataclass
class ChiroDiffConfig:
    """Architecture of the ChiroDiff denoiser; defaults are ChiroDiff's public config."""

    in_channels: int = 3  # features per point, e.g. (x, y, pen-up); the output has the same
    hidden_size: int = 96  # GRU units per direction
    num_layers: int = 3  # stacked GRU layers
    bidirectional: bool = True  # read the sequence both ways (False = causal, one direction)
    time_embed_dim: int = 8  # width of the timestep embedding γ(t); even
    rff_scale: float = 4.0  # std of the random Fourier frequencies ω
    num_train_timesteps: int = 1000  # T of the diffusion process; t is divided by T before embedding
    dropout: float = 0.0  # dropout between GRU layers (needs num_layers > 1)


class ChiroDiffDenoiser(nn.Module):
    """ε̂ = f(x_t, t) for point sequences x_t of shape (B, L, C), with an optional (B, L) padding mask."""

    def __init__(self, cfg: ChiroDiffConfig):
        super().__init__()
        for name in ("in_channels", "hidden_size", "num_layers"):
            if getattr(cfg, name) < 1:
                raise UserError(f"ChiroDiff {name} must be >= 1, got {getattr(cfg, name)}")
        if not 0 <= cfg.dropout < 1:
            raise UserError(f"ChiroDiff dropout must be in [0, 1), got {cfg.dropout}")
        self.cfg = cfg
        # The name `time_embedding` keeps these layers dense: the sparse engine skips it by default.
        self.time_embedding = RandomFourierFeatures(cfg.time_embed_dim, cfg.rff_scale, cfg.num_train_timesteps)
        self.gru = nn.GRU(
            cfg.in_channels + cfg.time_embed_dim,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        directions = 2 if cfg.bidirectional else 1
        self.output = nn.Linear(directions * cfg.hidden_size + cfg.time_embed_dim, cfg.in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C) noisy points x_t; t: (B,) timesteps; mask: (B, L) bool, True on real points.

        A mask must mark a prefix of each row (real points first, then padding), with at least one
        real point. Returns ε̂ of shape (B, L, C), exactly zero at padded points.
        """
        batch_size, length, _ = x.shape
        time_features = self.time_embedding(t)[:, None, :].expand(batch_size, length, -1)  # γ(t) per point
        gru_input = torch.cat([x, time_features], dim=-1)
        if mask is None:
            hidden, _ = self.gru(gru_input)
        else:
            lengths = _prefix_lengths(mask, x.shape)
            packed = pack_padded_sequence(gru_input, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_hidden, _ = self.gru(packed)
            hidden, _ = pad_packed_sequence(packed_hidden, batch_first=True, total_length=length)
        eps = self.output(torch.cat([hidden, time_features], dim=-1))
        if mask is not None:
            eps = eps.masked_fill(~mask[..., None], 0.0)
        return eps


def _prefix_lengths(mask: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """Lengths of the real prefixes of a (B, L) padding mask, checking that it is one."""
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x_shape[:2]):
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(x_shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
        )
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("mask must mark a prefix of each sequence (real points first, then padding)")
    if bool((lengths == 0).any()):
        raise ValueError("every sequence needs at least one real point; drop empty sequences from the batch")
    return lengths
