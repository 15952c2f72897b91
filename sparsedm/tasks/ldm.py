"""Latent Diffusion (Rombach et al. 2022) as the paper trains it: a UNet denoiser over the latents of a
frozen, dense autoencoder (LDM-VQ-4: f = 4, 256 px images -> 3 x 64 x 64 latents).

Data points are latents z (encoded once and cached, see sparsedm.autoencoder.latents) times the scaling
factor s (1.0 for a VQ autoencoder, as LDM-VQ-4; 1/std for a KL one, LDM's scale_by_std); the loss is
ε-prediction MSE on s·z; samples are decoded with the autoencoder from z = x_0 / s.
Only the UNet is handed to the training loop, so only it is sparse, optimised and EMA-averaged.
"""

import logging
from dataclasses import replace
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from sparsedm.autoencoder import FirstStage, cached_latents, decode, encode, latent_std
from sparsedm.data.images import display_name, load_image_splits, to_uint8_images
from sparsedm.data.images.dataset import SPLIT_RULE
from sparsedm.data.images.flips import mirror_choices
from sparsedm.data.images.grid import save_image_grid
from sparsedm.diffusion import GaussianDiffusion
from sparsedm.errors import UserError
from sparsedm.models.unet import allowed_base_channels, build_unet, check_unet_config
from sparsedm.runs.distributed import DistInfo, resolve_device
from sparsedm.tasks.base import Task

log = logging.getLogger(__name__)


class LatentDiffusionTask(Task):
    name = "ldm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        self.first_stage = FirstStage(cfg.autoencoder.path)  # reads only its config.json
        if cfg.data.image_size % self.first_stage.factor:
            raise UserError(
                f"data.image_size={cfg.data.image_size} is not divisible by the autoencoder's downsampling factor f={self.first_stage.factor}"
            )
        trained_at = self.first_stage.image_size
        if trained_at is not None and trained_at != cfg.data.image_size:
            raise UserError(
                f"the autoencoder in {self.first_stage.folder} was trained on {trained_at} px images, not "
                f"data.image_size={cfg.data.image_size}; train one at {cfg.data.image_size} px or set data.image_size={trained_at}"
            )
        self.latent_size = cfg.data.image_size // self.first_stage.factor
        self.check_model()
        self.scaling_factor: float | None = None  # s: the UNet sees s·z; set by load_data or a checkpoint
        self.autoencoder_sha256: str | None = None  # the autoencoder the run was trained in

    @property
    def latent_shape(self) -> tuple:
        return (self.first_stage.latent_channels, self.latent_size, self.latent_size)

    def check_model(self) -> None:
        """One-line errors for a `model:` block the denoiser cannot be built from on these latents."""
        check_unet_config(self.cfg.model, self.latent_size)

    def widths(self) -> List[int]:
        return allowed_base_channels(self.cfg.model)

    def build_denoiser(self, width: Optional[int] = None) -> nn.Module:
        model = self.cfg.model if width is None else replace(self.cfg.model, base_channels=width)
        return build_unet(model, self.latent_size, self.first_stage.latent_channels)

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂(x_t, t): the denoiser's output, the one place the loss and the sampler call it."""
        return model(x_t, t, return_dict=False)[0]

    def load_data(self, progress=None, device=None):
        device = device or resolve_device(self.cfg.train.device, DistInfo())
        train, val = cached_latents(
            self.cfg.data, self.first_stage, device, self.cfg.autoencoder.encode_batch_size, progress
        )
        self.autoencoder_sha256 = self.first_stage.identity
        self.scaling_factor, why = self._scaling_factor(train)
        log.info("latents %s, scaling factor %.5f: %s", "x".join(map(str, self.latent_shape)), self.scaling_factor, why)
        return train, val

    def _scaling_factor(self, train) -> tuple[float, str]:
        """s and why: the config's value; else 1.0 for a VQ autoencoder (LDM-VQ); else a KL autoencoder's own,
        else 1/std of its training latents (LDM-KL's scale_by_std)."""
        if self.cfg.autoencoder.scaling_factor is not None:
            return float(self.cfg.autoencoder.scaling_factor), "autoencoder.scaling_factor in the config"
        own = self.first_stage.scaling_factor
        if self.first_stage.kind == "vq":
            if own is not None and own != 1.0:
                log.warning(
                    "%s states scaling_factor=%g (diffusers' VQModel default is Stable Diffusion's KL value 0.18215); "
                    "not used: a VQ autoencoder's latents are unscaled in LDM. Set autoencoder.scaling_factor to use it",
                    self.first_stage.folder / "config.json",
                    own,
                )
            return 1.0, "a VQ autoencoder, unscaled as LDM-VQ (LatentDiffusion scale_factor=1.0, scale_by_std=False)"
        if own is not None:
            return own, f"the KL autoencoder's own, from {self.first_stage.folder / 'config.json'}"
        return 1.0 / latent_std(train), "1/std of the training latents (LDM-KL's scale_by_std)"

    def collate(self, items):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    def loss(self, model, batch, seeds):
        z, std = batch["mean"], batch.get("std")
        if "mirrored_mean" in batch:  # data.flip_p > 0: each sample is its image or the mirror, from its seed
            mirror = mirror_choices(seeds, self.cfg.data.flip_p).to(z.device).view(-1, 1, 1, 1)
            z = torch.where(mirror, batch["mirrored_mean"], z)
            std = torch.where(mirror, batch["mirrored_std"], std) if std is not None else None
        posterior = std is not None  # a KL autoencoder: a fresh z ~ N(mean, std²) per sample and step, as LDM-KL
        t, noise = self.diffusion.draw((len(z), 2 if posterior else 1, *z.shape[1:]), seeds, z.device)
        if posterior:
            z = z + std * noise[:, 1]
        x0 = z * self.scaling_factor
        return self.diffusion.loss(lambda x_t, t_: self.predict(model, x_t, t_), x0, t=t, noise=noise[:, 0])

    def flops_inputs(self, batch):
        x = batch["mean"]
        return (x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))

    @torch.no_grad()
    def sample(self, model, num, generator, device, sampling, progress=True) -> Dict[str, np.ndarray]:
        if self.scaling_factor is None:
            raise RuntimeError("the scaling factor is unknown: load the data or a checkpoint's task state first")
        self.check_autoencoder()
        sc = sampling
        autoencoder = self.first_stage.load(device)
        latents, images = [], []
        for start in range(0, num, sc.batch_size):
            count = min(sc.batch_size, num - start)
            x0 = self.diffusion.sample(
                lambda x_t, t: self.predict(model, x_t, t),
                (count, *self.latent_shape),
                sampler=sc.sampler,
                steps=sc.steps,
                eta=sc.eta,
                variance_strength=sc.variance_strength,
                generator=generator,
                device=device,
                progress=progress,
            )
            z = x0 / self.scaling_factor
            latents.append(z.float().cpu().numpy())
            images.append(to_uint8_images(decode(autoencoder, z)))
        return {"images": np.concatenate(images), "latents": np.concatenate(latents)}

    def check_autoencoder(self) -> None:
        """Decoding with another autoencoder than the run's gives noise: refuse it."""
        if self.autoencoder_sha256 is not None and self.first_stage.identity != self.autoencoder_sha256:
            raise UserError(
                f"the autoencoder in {self.first_stage.folder} is not the one this run was trained with; "
                "set autoencoder.path in the run's config.yaml to that one"
            )

    def save_picture(self, samples, path) -> None:
        save_image_grid(samples["images"], path)

    def to_images(self, samples) -> np.ndarray:
        return samples["images"]

    def reference_images(self, split: str = "val") -> np.ndarray:
        train, val = load_image_splits(self.cfg.data)
        return {"train": train, "val": val}[split].images

    near_copy_kind = "the autoencoder's reconstructions of training images"

    @torch.no_grad()
    def near_copies(self, count: int) -> np.ndarray:
        """decode(encode(x)) of the first `count` training images: what a model that had learnt them by heart
        would draw, through the same first stage its samples pass."""
        images = load_image_splits(self.cfg.data)[0].images[:count]
        autoencoder = self.first_stage.load("cpu")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return to_uint8_images(decode(autoencoder, encode(autoencoder, x)[0]))

    def reference_groups(self, split: str = "val") -> list[str] | None:
        train, val = load_image_splits(self.cfg.data)
        return {"train": train, "val": val}[split].groups

    def reference_key(self, split: str = "val") -> str:
        return f"{super().reference_key(split)}/split-rule-{SPLIT_RULE}"

    def data_name(self) -> str:
        return display_name(self.cfg.data)

    def frozen_identity(self) -> str | None:
        return self.autoencoder_sha256

    def state_dict(self) -> dict:
        return {"scaling_factor": self.scaling_factor, "autoencoder_sha256": self.autoencoder_sha256}

    def load_state_dict(self, state: dict) -> None:
        self.scaling_factor = state.get("scaling_factor")
        self.autoencoder_sha256 = state.get("autoencoder_sha256")
