"""Model-agnostic Gaussian diffusion: the training loss and DDPM/DDIM sampling for any denoiser."""

from .config import DiffusionConfig
from .process import GaussianDiffusion

__all__ = ["DiffusionConfig", "GaussianDiffusion"]
