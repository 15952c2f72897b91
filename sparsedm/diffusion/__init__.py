"""Model-agnostic Gaussian diffusion: the training loss and DDPM/DDIM sampling for any denoiser."""

from sparsedm.diffusion.config import DiffusionConfig
from sparsedm.diffusion.process import GaussianDiffusion

__all__ = ["DiffusionConfig", "GaussianDiffusion"]
