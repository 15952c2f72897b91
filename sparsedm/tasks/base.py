"""What a diffusion task gives the generic training loop.

A task owns its model, data and diffusion process; the loop owns optimisation, sparsity, EMA, logging and
checkpoints. Neither knows how the other works. A task that needs more than a loss (the autoencoder: Adam
with its own betas, codebook restarts, a diffusers folder at the end) uses the optional hooks below, whose
defaults do nothing beyond what a denoiser needs.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.tasks.width import MatchedWidth, match_width


class Task:
    name: str = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        """The trained model: the denoiser (the only part that is sparse-trained), or the autoencoder. With
        `small_dense` = S, the denoiser narrowed to the non-zero count of S (tasks/width.py)."""
        matched = self.matched_width()
        return self.build_denoiser(None if matched is None else matched.width)

    def build_denoiser(self, width: Optional[int] = None) -> nn.Module:
        """The denoiser of the config, or of the same architecture at `width` (one of `widths`)."""
        raise NotImplementedError

    def widths(self) -> List[int]:
        """The widths the denoiser can take up to the config's, ascending (the hook Small-Dense narrows through)."""
        raise UserError(f"task={self.name} has no width to narrow; small_dense needs a denoiser task")

    def matched_width(self) -> Optional[MatchedWidth]:
        """Small-Dense's width for `small_dense` = S (computed once), or None for a model of the config's width."""
        sparsity = getattr(self.cfg, "small_dense", None)
        if sparsity is None:
            return None
        if getattr(self, "_matched_width", None) is None:
            self._matched_width = match_width(self.build_denoiser, self.widths(), self.cfg.sparse, sparsity)
        return self._matched_width

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

    def build_optimizer(self, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
        """AdamW with cfg.train's learning rate and weight decay; fused: one kernel per step, and no slow path
        on the zeros of masked weights (see sparse/optim_state.py)."""
        tc = self.cfg.train
        fused = device.type in ("cpu", "cuda")
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)

    def after_optimizer_step(self, model: nn.Module, step: int) -> Optional[dict]:
        """Work of the task's own after optimiser step `step` (from 1) on the trained model, before the EMA
        update; a dict returned is logged to metrics.jsonl as an event."""
        return None

    def validation_metrics(self, model: nn.Module) -> dict:
        """Measures of the validated (EMA) model logged beside each validation loss; none by default."""
        return {}

    def finish(self, model: nn.Module, folder: Path, summary: dict) -> None:
        """Write the task's own results of a finished run (the EMA model, the run's summary) into its folder."""

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

    def reference_groups(self, split: str = "val") -> Optional[Sequence[str]]:
        """Per item of `reference_images(split)`, its group of variants (colourings of one drawing), or None when
        items come in no groups; the memorisation test looks past an item's own group for its second nearest."""
        return None

    # the memorisation test's positive control (eval/memorisation.py): how the task makes near copies; "" for none
    near_copy_kind: str = ""

    def near_copies(self, count: int) -> np.ndarray:
        """uint8 pictures, as `reference_images` makes them, of near copies of the first `count` training items by
        construction (near_copy_kind says how, and names them in the cache: change it when they change)."""
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

    def frozen_identity(self) -> Optional[str]:
        """A fingerprint of the frozen, pretrained parts the samples pass through (Latent Diffusion's
        autoencoder), as the run was trained with them; None when there are none. Runs with different ones
        are not comparable."""
        return None

    def state_dict(self) -> dict:
        """What sampling or a resumed run needs from the task (e.g. the length distribution), stored in
        checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
