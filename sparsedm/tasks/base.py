"""What a diffusion task gives the generic training loop.

A task owns its model, data and diffusion process; the loop owns optimisation, sparsity, EMA, logging and
checkpoints. Neither knows how the other works.
"""

import hashlib
import json
from dataclasses import asdict
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
from torch import nn


class Task:
    name: str = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        """The denoiser, the only part that is sparse-trained."""
        raise NotImplementedError

    def load_data(
        self, progress: bool | None = None, device: torch.device | None = None
    ) -> Tuple[Sequence[Any], Sequence[Any]]:
        """(train, val) indexable data sets of items for `collate`; progress: bars for slow first loads
        (preprocessing, decoding, encoding), None: on a terminal only; device: where to do heavy preparation
        such as encoding latents (None: the config's train.device)."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        """The diffusion loss of a batch; sample i draws its timestep and noise from seeds[i] only
        (`GaussianDiffusion.draw`), so a batch split over ranks sees the noise of the unsplit batch."""
        raise NotImplementedError

    def flops_inputs(self, batch: Dict[str, torch.Tensor]) -> tuple:
        """Positional arguments of one forward pass for one sample, for FLOP counting."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, model: nn.Module, num: int, generator: torch.Generator, device, sampling, progress: bool = True
    ) -> Dict[str, np.ndarray]:
        """Generate `num` samples with the `sampling` settings (a SampleConfig); returns the arrays of samples.npz."""
        raise NotImplementedError

    def save_picture(self, samples: Dict[str, np.ndarray], path) -> None:
        """A PNG grid of the samples."""
        raise NotImplementedError

    def to_images(self, samples: Dict[str, np.ndarray]) -> np.ndarray:
        """uint8 N x H x W x C pictures of generated samples, exactly as FID sees them."""
        raise NotImplementedError

    def reference_images(self, split: str = "val") -> np.ndarray:
        """uint8 N x H x W x C pictures of a real data split, made the same way as `to_images`."""
        raise NotImplementedError

    def reference_key(self, split: str = "val") -> str:
        """Names the FID statistics of `reference_images(split)` in a cache: it must change whenever they would.

        Here the task, the split and a hash of the data config less its cache folder and training flips; a task
        whose pictures depend on more (a rendering size) appends it.
        """
        data = {k: v for k, v in asdict(self.cfg.data).items() if k not in ("cache_dir", "flip_p")}
        digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}/{self.cfg.data.name}/{split}/{digest}"

    def data_name(self) -> str:
        """The data set's honest display name (a stand-in says so)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What sampling needs from the data (e.g. the length distribution), stored in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
