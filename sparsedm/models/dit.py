"""A Diffusion Transformer (Peebles & Xie, ICCV 2023) as the denoiser: diffusers' `DiTTransformer2DModel`.

Unconditional, as the paper's models: one class (`num_embeds_ada_norm=1`) and every call gets label 0, so the
class embedding is one learnt vector added to the timestep embedding (diffusers' table has a second row, the
null label of classifier-free guidance, which is never read). ε-prediction with as many output channels as
latent channels (no learnt Σ). The defaults are DiT-S/2's: hidden 384, 12 blocks, 6 heads, patch 2.

diffusers' class differs from the DiT reference in one way that shows in the counts: every block has its own
timestep embedder (`transformer_blocks.N.norm1.emb`), where DiT shares one; at DiT-S/2 that is 12 x 0.25M
parameters more. diffusers builds the model with torch's default initialisation, not DiT's; `zero_init` sets
what DiT starts at zero, which is what makes adaLN-Zero's blocks start as the identity: each block's adaLN
modulation (`norm1.linear`) and the final layer's modulation and projection (`proj_out_1`, `proj_out_2`).
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from diffusers import DiTTransformer2DModel

from sparsedm.errors import UserError


@dataclass
class DiTConfig:
    hidden_size: int = 384  # token width (DiT-S: 384; DiT-B 768); a multiple of 4 and of num_heads
    num_layers: int = 12  # transformer blocks (DiT-S: 12)
    num_heads: int = 6  # attention heads (DiT-S: 6: 64 channels each)
    patch_size: int = 2  # latent pixels per token side (DiT-S/2: 2); must divide the latent size
    dropout: float = 0.0  # dropout in attention and feed-forward (DiT: 0)
    zero_init: bool = True  # start adaLN modulations and the final layer at zero, as DiT; false: torch's defaults


# the 2-d sin-cos position embedding gives each axis half the channels, in sin and cos halves
POSITION_EMBEDDING_MULTIPLE = 4


def allowed_hidden_sizes(cfg: DiTConfig) -> List[int]:
    """The hidden sizes up to cfg's that the heads and the position embedding divide (the widths a narrower DiT of
    the same depth and head count can take, ascending): Small-Dense narrows each head, not their number."""
    step = math.lcm(cfg.num_heads, POSITION_EMBEDDING_MULTIPLE)
    return list(range(step, cfg.hidden_size + 1, step))


def check_dit_config(cfg: DiTConfig, sample_size: int) -> None:
    """One-line errors for shapes DiTTransformer2DModel cannot build on a sample_size x sample_size latent."""
    if min(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.patch_size) < 1:
        raise UserError(
            "model.hidden_size, model.num_layers, model.num_heads and model.patch_size must be positive, e.g. 384, 12, 6, 2"
        )
    if cfg.hidden_size % cfg.num_heads or cfg.hidden_size % POSITION_EMBEDDING_MULTIPLE:
        raise UserError(
            f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads={cfg.num_heads} and by "
            f"{POSITION_EMBEDDING_MULTIPLE} (the 2-d position embedding); use a multiple of both"
        )
    if sample_size % cfg.patch_size:
        raise UserError(
            f"model.patch_size={cfg.patch_size} does not divide the {sample_size} x {sample_size} latent; "
            "use a divisor of the latent size"
        )
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"model.dropout={cfg.dropout} must be in [0, 1)")


def dit_kwargs(cfg: DiTConfig, sample_size: int, channels: int) -> dict:
    """DiTTransformer2DModel's arguments for `channels` x sample_size x sample_size latents."""
    check_dit_config(cfg, sample_size)
    return dict(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=channels,
        out_channels=channels,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
        sample_size=sample_size,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=1,  # one class: unconditional
    )


def zero_initialized_layers(dit: DiTTransformer2DModel) -> list:
    """The layers DiT starts at zero: each block's adaLN modulation, the final modulation and projection."""
    return [*(block.norm1.linear for block in dit.transformer_blocks), dit.proj_out_1, dit.proj_out_2]


def build_dit(cfg: DiTConfig, sample_size: int, channels: int) -> DiTTransformer2DModel:
    dit = DiTTransformer2DModel(**dit_kwargs(cfg, sample_size, channels))
    for block in dit.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # no label dropout: unconditional (above)
    if cfg.zero_init:
        with torch.no_grad():
            for layer in zero_initialized_layers(dit):
                for param in layer.parameters():
                    param.zero_()
    return dit


def unconditional(model: DiTTransformer2DModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε̂(x_t, t) of the one-class DiT: label 0 for every sample."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return model(x, t, labels, return_dict=False)[0]
