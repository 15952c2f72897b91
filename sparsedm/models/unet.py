"""Latent Diffusion's denoiser: a diffusers `UNet2DModel` over the autoencoder's latents.

Defaults are the LDM-4 UNet of the LDM-VQ-4 setups (CelebA-HQ, LSUN-Bedrooms): 224 base channels with
multipliers 1, 2, 3, 4, two res blocks per level, self-attention at latent resolutions 32, 16 and 8 (of a
64 x 64 latent), 32 channels per attention head, and the sinusoidal timestep embedding (`positional`,
flip_sin_to_cos, no shift, as LDM). The latent size and channels come from the autoencoder, not from here.

LDM wraps three kinds of layers in `zero_module` (ldm/modules/diffusionmodules/openaimodel.py): each res block's
second conv (`ResBlock.out_layers`), each attention block's output projection (`AttentionBlock.proj_out`) and the
final conv (`UNetModel.out`). In diffusers' UNet2DModel these are `ResnetBlock2D.conv2`, `Attention.to_out[0]` and
`conv_out`; `zero_init` sets their weights and biases to zero after the model is built, as LDM does.
"""

from dataclasses import dataclass, field
from typing import List

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from sparsedm.errors import UserError


@dataclass
class UNetConfig:
    base_channels: int = 224  # channels of the first level (LDM-4: model_channels 224)
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 3, 4])  # per level: (224, 448, 672, 896)
    layers_per_block: int = 2  # res blocks per level (LDM-4: num_res_blocks 2)
    attention_resolutions: List[int] = field(default_factory=lambda: [32, 16, 8])  # latent sizes with self-attention
    attention_head_dim: int = 32  # channels per attention head (LDM-4: num_head_channels 32)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every level's channels
    dropout: float = 0.0  # dropout in the res blocks (LDM-4: 0)
    zero_init: bool = True  # start res blocks' conv2, attention outputs and conv_out at zero, as LDM; false: diffusers'


def block_out_channels(cfg: UNetConfig) -> List[int]:
    return [cfg.base_channels * m for m in cfg.channel_mult]


def allowed_base_channels(cfg: UNetConfig) -> List[int]:
    """The base channel counts up to cfg's whose levels the group norms and attention heads all divide (the widths
    a narrower UNet of the same architecture can take, ascending)."""
    divisors = (cfg.norm_num_groups, cfg.attention_head_dim)
    return [
        width
        for width in range(1, cfg.base_channels + 1)
        if all(width * m % d == 0 for m in cfg.channel_mult for d in divisors)
    ]


def check_unet_config(cfg: UNetConfig, sample_size: int) -> None:
    """One-line errors for architectures UNet2DModel cannot build on a sample_size x sample_size latent."""
    if cfg.base_channels < 1 or not cfg.channel_mult or min(cfg.channel_mult) < 1 or cfg.layers_per_block < 1:
        raise UserError(
            "model.base_channels, model.channel_mult and model.layers_per_block must be positive, e.g. 64, [1, 2], 2"
        )
    downsamplings = len(cfg.channel_mult) - 1
    if sample_size % 2**downsamplings:
        raise UserError(
            f"the {sample_size} x {sample_size} latent cannot be halved {downsamplings} times; "
            f"use fewer model.channel_mult levels or a larger data.image_size"
        )
    resolutions = [sample_size // 2**level for level in range(len(cfg.channel_mult))]
    unused = [r for r in cfg.attention_resolutions if r not in resolutions]
    if unused:
        raise UserError(
            f"model.attention_resolutions {unused} match no level of this UNet (latent sizes {resolutions})"
        )
    for channels in block_out_channels(cfg):
        if channels % cfg.norm_num_groups or channels % cfg.attention_head_dim:
            raise UserError(
                f"a level of {channels} channels is not divisible by model.norm_num_groups={cfg.norm_num_groups} "
                f"and model.attention_head_dim={cfg.attention_head_dim}; change base_channels or those"
            )
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"model.dropout={cfg.dropout} must be in [0, 1)")


def unet_kwargs(cfg: UNetConfig, sample_size: int, channels: int) -> dict:
    """UNet2DModel's arguments for `channels` x sample_size x sample_size latents (ε-prediction: as many out)."""
    check_unet_config(cfg, sample_size)
    attention = [sample_size // 2**level in cfg.attention_resolutions for level in range(len(cfg.channel_mult))]
    return dict(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels(cfg)),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        time_embedding_type="positional",  # sinusoidal, as LDM
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def zero_initialized_layers(unet: UNet2DModel) -> list:
    """The layers LDM's `zero_module` starts at zero: res blocks' conv2, attention to_out[0], conv_out."""
    layers = []
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            layers.append(module.conv2)
        elif isinstance(module, Attention):
            layers.append(module.to_out[0])
    return [*layers, unet.conv_out]


def build_unet(cfg: UNetConfig, sample_size: int, channels: int) -> UNet2DModel:
    unet = UNet2DModel(**unet_kwargs(cfg, sample_size, channels))
    if cfg.zero_init:
        with torch.no_grad():
            for layer in zero_initialized_layers(unet):
                for param in layer.parameters():
                    param.zero_()
    return unet
