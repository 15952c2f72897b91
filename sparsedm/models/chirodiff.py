"""ChiroDiff's denoiser (Das et al., ICLR 2023): a bidirectional GRU over a sequence of pen points.

Layer for layer ChiroDiff's `ScoreFunc('birnn', ...)` (models/score.py:50-150 of dasayan05/chirodiff):
1. the noisy sequence is given in both representations (`create_posvel_aug_input`, main.py:323-335):
   deltas also as cumulative positions, absolute points also as differences, positions first, so each point
   has 2C - 1 features (5 for x, y, pen: [x, y, dx, dy, pen] for deltas, [x, y, pen, dx, dy] for absolute);
2. γ(t) (raw random Fourier features) is appended to every point (score.py:126, 137, 142);
3. a stacked GRU reads the sequence (score.py:61), `out_proj` = Linear(directions * H -> H) maps its state
   (score.py:67, 77), and `final_proj` = Linear(H + dim γ -> C) maps [out_proj(h), γ(t)] to ε̂ (score.py:110-113,
   147), with no nonlinearity in between.
Padded sequences are packed, so padding never reaches the real points.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sparsedm.errors import UserError
from sparsedm.models.time_embedding import RandomFourierFeatures

REPRESENTATIONS = ("delta", "absolute")


@dataclass
class ChiroDiffConfig:
    """Architecture of the ChiroDiff denoiser; defaults are ChiroDiff's public config (config.yml:66-71)."""

    in_channels: int = 3  # features per point, e.g. (x, y, pen); the output has the same
    hidden_size: int = 96  # GRU units per direction (arch_internal)
    num_layers: int = 3  # stacked GRU layers (arch_layer)
    bidirectional: bool = True  # read the sequence both ways (False = causal, one direction)
    time_embed_dim: int = 8  # width of the timestep embedding γ(t); even (arch_pe_dim)
    rff_scale: float = 4.0  # std of the random Fourier frequencies ω
    num_train_timesteps: int = 1000  # T; a run sets it from diffusion.num_train_timesteps
    representation: Optional[str] = None  # delta | absolute: what x_t holds; None = the run's data.representation
    dropout: float = 0.0  # dropout between GRU layers (needs num_layers > 1)


def augmented_input(x: torch.Tensor, representation: str) -> torch.Tensor:
    """(B, L, C) points -> (B, L, 2C - 1): [positions, deltas], the last channel (pen) appearing once.

    delta: positions = cumulative sums of the deltas' coordinates, then the deltas with their pen;
    absolute: the points with their pen, then their differences (the first row's difference is the point
    itself). Padding sits after the real points, so it never changes a real point's features.
    """
    if representation == "delta":
        return torch.cat([torch.cumsum(x[..., :-1], dim=1), x], dim=-1)
    coords = x[..., :-1]
    diffs = torch.cat([coords[:, :1], coords[:, 1:] - coords[:, :-1]], dim=1)
    return torch.cat([x, diffs], dim=-1)


class ChiroDiffDenoiser(nn.Module):
    """ε̂ = f(x_t, t) for point sequences x_t of shape (B, L, C), with an optional (B, L) padding mask."""

    def __init__(self, cfg: ChiroDiffConfig):
        super().__init__()
        for name in ("hidden_size", "num_layers"):
            if getattr(cfg, name) < 1:
                raise UserError(f"ChiroDiff {name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.in_channels < 2:
            raise UserError(
                f"ChiroDiff in_channels must be >= 2 (coordinates and a pen channel), got {cfg.in_channels}"
            )
        if not 0 <= cfg.dropout < 1:
            raise UserError(f"ChiroDiff dropout must be in [0, 1), got {cfg.dropout}")
        self.representation = cfg.representation or "delta"  # outside a run, the paper's delta form
        if self.representation not in REPRESENTATIONS:
            raise UserError(f"ChiroDiff representation {cfg.representation!r} is unknown; use delta or absolute")
        self.cfg = cfg
        # No parameters: the sparse engine has nothing to sparsify here (its time-embedding rule matches the name).
        self.time_embedding = RandomFourierFeatures(cfg.time_embed_dim, cfg.rff_scale, cfg.num_train_timesteps)
        self.gru = nn.GRU(
            2 * cfg.in_channels - 1 + cfg.time_embed_dim,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        directions = 2 if cfg.bidirectional else 1
        self.out_proj = nn.Linear(directions * cfg.hidden_size, cfg.hidden_size)
        self.final_proj = nn.Linear(cfg.hidden_size + cfg.time_embed_dim, cfg.in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C) noisy points x_t; t: (B,) timesteps; mask: (B, L) bool, True on real points.

        A mask must mark a prefix of each row (real points first, then padding), with at least one
        real point. Returns ε̂ of shape (B, L, C), exactly zero at padded points.
        """
        batch_size, length, _ = x.shape
        time_features = self.time_embedding(t)[:, None, :].expand(batch_size, length, -1)  # γ(t) per point
        gru_input = torch.cat([augmented_input(x, self.representation), time_features], dim=-1)
        if mask is None:
            hidden, _ = self.gru(gru_input)
        else:
            lengths = _prefix_lengths(mask, x.shape)
            packed = pack_padded_sequence(gru_input, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_hidden, _ = self.gru(packed)
            hidden, _ = pad_packed_sequence(packed_hidden, batch_first=True, total_length=length)
        eps = self.final_proj(torch.cat([self.out_proj(hidden), time_features], dim=-1))
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
