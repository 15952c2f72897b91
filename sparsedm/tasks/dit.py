"""A Diffusion Transformer denoiser (DiT, Peebles & Xie 2023) over Latent Diffusion's latents.

Everything but the denoiser is the Latent Diffusion task's (tasks/ldm.py): the frozen autoencoder and its
scaling factor, the cached latents, the noise schedule, the sampler, the pictures FID sees and the memorisation
control. The denoiser is diffusers' `DiTTransformer2DModel` with one class (models/dit.py), and Small-Dense
narrows its hidden size among the multiples of the head count.
"""

from dataclasses import replace
from typing import List, Optional

import torch
from torch import nn

from sparsedm.models.dit import allowed_hidden_sizes, build_dit, check_dit_config, unconditional
from sparsedm.tasks.ldm import LatentDiffusionTask


class DiTTask(LatentDiffusionTask):
    name = "dit"

    def check_model(self) -> None:
        check_dit_config(self.cfg.model, self.latent_size)

    def widths(self) -> List[int]:
        return allowed_hidden_sizes(self.cfg.model)

    def build_denoiser(self, width: Optional[int] = None) -> nn.Module:
        model = self.cfg.model if width is None else replace(self.cfg.model, hidden_size=width)
        return build_dit(model, self.latent_size, self.first_stage.latent_channels)

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unconditional(model, x_t, t)

    def flops_inputs(self, batch):
        x, t = super().flops_inputs(batch)
        return (x, t, torch.zeros_like(t))
