"""The reconstruction objective, as one module: the training loop calls it (and DDP wraps it) like a denoiser.

Loss: L1 (or MSE) between image and reconstruction, plus the VQ loss (codebook + commitment, through
diffusers' VectorQuantizer with its straight-through gradient) for `vq`, or the weighted KL term for `kl`.
LDM also uses LPIPS and a patch GAN; without them reconstructions are blurrier, which is why the paper-scale
configs suggest a pretrained LDM autoencoder where one can be downloaded.
"""

from typing import Optional, Tuple

import torch
from diffusers import AutoencoderKL, VQModel
from torch import nn

from sparsedm.autoencoder.model import decode, encode


class ReconstructionObjective(nn.Module):
    """forward(x, ε) -> (reconstruction loss, weighted regulariser, encoder output h, chosen codes or None).

    The autoencoder is its only child (`.autoencoder`); ε (the KL posterior's noise, N(0, I) per sample)
    comes from the caller so that it depends on the sample's seed only; None decodes the posterior mean.
    """

    def __init__(self, autoencoder: VQModel | AutoencoderKL, recon_loss: str, codebook_weight: float, kl_weight: float):
        super().__init__()
        self.autoencoder = autoencoder
        self.recon_loss, self.codebook_weight, self.kl_weight = recon_loss, codebook_weight, kl_weight

    def forward(
        self, x: torch.Tensor, noise: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        model = self.autoencoder
        mean, std = encode(model, x)
        codes = None
        if std is None:
            quant, regulariser, (_, _, codes) = model.quantize(mean)  # regulariser: the VQ (commitment) loss
            reconstruction = model.decode(quant, force_not_quantize=True).sample
            weight = self.codebook_weight
        else:
            reconstruction = decode(model, mean if noise is None else mean + std * noise)
            # per pixel value, like the mean L1: LDM's kl_weight 1e-6 weighs it against a per-image *sum* of L1
            regulariser = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * std.log()).flatten(1).sum(1).mean() / x[0].numel()
            weight = self.kl_weight
        error = reconstruction - x
        recon = error.abs().mean() if self.recon_loss == "l1" else error.pow(2).mean()
        return recon, weight * regulariser, mean, codes


def posterior_noise(shape: tuple, seeds: torch.Tensor, device) -> torch.Tensor:
    """ε for a batch of latents of `shape`, sample i drawn on the CPU from its own generator seeded with
    seeds[i]: a batch split over ranks gets the noise it would get in one process."""
    noise = [torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    return torch.stack(noise).to(device)
