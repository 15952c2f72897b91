"""What a diffusion task gives the generic training loop.

A task owns its model, data and diffusion process; the loop owns optimisation, sparsity, EMA, logging and
checkpoints. Neither knows how the other works.
"""

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn


class Task:
    name: str = ""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        """The denoiser, the only part that is sparse-trained."""
        raise NotImplementedError

    def load_data(self) -> Tuple[Sequence[Any], Sequence[Any]]:
        """(train, val) indexable data sets of items for `collate`."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def flops_inputs(self, batch: Dict[str, torch.Tensor]) -> tuple:
        """Positional arguments of one forward pass for one sample, for FLOP counting."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, model: nn.Module, num: int, generator: torch.Generator, device, progress: bool = True) -> Dict[str, np.ndarray]:
        """Generate `num` samples with `cfg.sample`; returns the arrays of samples.npz."""
        raise NotImplementedError

    def save_picture(self, samples: Dict[str, np.ndarray], path) -> None:
        """A PNG grid of the samples."""
        raise NotImplementedError

    def data_name(self) -> str:
        """The data set's honest display name (a stand-in says so)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What sampling needs from the data (e.g. the length distribution), stored in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
