"""Latent Diffusion as CompVis/latent-diffusion builds and feeds it: LDM's zero-initialised layers, and the paper
configs' flips (ldm/data/lsun.py flips LSUN with p = 0.5; taming's CelebAHQTrain and ldm's ImageNetTrain do not)."""

import pytest

from sparsedm.config import load_config
from sparsedm.models.unet import UNetConfig, build_unet

SMALL = dict(base_channels=16, channel_mult=[1, 2], attention_resolutions=[4], attention_head_dim=8, norm_num_groups=8)


def zero_weights(unet) -> set:
    """Layers (by weight name) whose weight is all zero; norms' weights start at one, biases often at zero."""
    return {name for name, p in unet.named_parameters() if name.endswith("weight") and not p.any()}


def test_zero_init_starts_ldms_zero_modules_at_zero():
    unet = build_unet(UNetConfig(**SMALL), sample_size=8, channels=3)
    names = {n for n, _ in unet.named_parameters()}
    res_conv2 = {n for n in names if ".resnets." in n and n.endswith(".conv2.weight")}
    attention_out = {n for n in names if ".attentions." in n and n.endswith(".to_out.0.weight")}
    # LDM's UNetModel with 2 levels and 2 res blocks: 2 x 2 input + 2 middle + 2 x 3 output ResBlocks, and
    # attention at the second level: 2 input + 1 middle + 3 output AttentionBlocks
    assert len(res_conv2) == 12 and len(attention_out) == 6
    zeroed = res_conv2 | attention_out | {"conv_out.weight"}
    assert zero_weights(unet) == zeroed
    params = dict(unet.named_parameters())
    assert not any(params[n.replace(".weight", ".bias")].any() for n in zeroed)  # zero_module zeroes biases too

    diffusers_init = build_unet(UNetConfig(**SMALL, zero_init=False), sample_size=8, channels=3)
    assert zero_weights(diffusers_init) == set()


@pytest.mark.parametrize(
    "config, flip_p",
    [("configs/ldm_lsun_bedrooms.yaml", 0.5), ("configs/ldm_celebahq.yaml", 0.0), ("configs/ldm_imagenette.yaml", 0.0)],
)
def test_paper_configs_follow_the_reference(config, flip_p):
    cfg = load_config(config, ["data.path=/data/images"])  # the paper configs leave the data folder to the user
    assert cfg.model.zero_init and cfg.data.flip_p == flip_p
    assert cfg.autoencoder.scaling_factor is None  # a VQ autoencoder: 1.0, LatentDiffusion's scale_factor
