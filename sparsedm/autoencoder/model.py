"""The autoencoders themselves: diffusers `VQModel` (LDM-VQ) and `AutoencoderKL` (LDM-KL).

`build_autoencoder` makes a fresh one to train; `FirstStage` is a trained one in a local diffusers folder,
frozen and dense, as Latent Diffusion uses it: images -> latent posterior (`encode`) and latents -> images
(`decode`). For a VQ model the latent is the encoder output before quantisation and decoding quantises it
(LDM-VQ's and diffusers' LDMPipeline's convention); for a KL model it is the posterior N(mean, std²).
"""

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Optional, Tuple

import torch
from diffusers import AutoencoderKL, VQModel

from sparsedm.autoencoder.config import AutoencoderConfig
from sparsedm.errors import UserError
from sparsedm.runs.run_dir import CHECKPOINTS, CONFIG, METRICS, SUMMARY

WEIGHTS_PREFIX = "diffusion_pytorch_model"  # diffusers' weight files: .safetensors, .bin, or sharded
RUN_METRICS = "metrics.json"  # what `sparsedm train-autoencoder` writes last: image size, reconstruction error

CLASSES = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}
KIND_OF_CLASS = {"VQModel": "vq", "AutoencoderKL": "kl"}
PIPELINE_SUBFOLDERS = ("vqvae", "vae")  # where a diffusers pipeline folder keeps its autoencoder


def build_autoencoder(cfg: AutoencoderConfig, image_size: int) -> VQModel | AutoencoderKL:
    levels = len(cfg.block_out_channels)
    common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
    )
    if cfg.kind == "vq":
        return VQModel(num_vq_embeddings=cfg.num_vq_embeddings, vq_embed_dim=cfg.latent_channels, **common)
    return AutoencoderKL(**common)


def encode(model, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(mean, std) of the latent posterior of images x in [-1, 1]; std is None for a VQ model."""
    if isinstance(model, VQModel):
        return model.encode(x).latents, None
    posterior = model.encode(x).latent_dist
    return posterior.mean, posterior.std


def decode(model, z: torch.Tensor) -> torch.Tensor:
    """Images in about [-1, 1] from unscaled latents (a VQ model quantises them first)."""
    return model.decode(z).sample


def find_autoencoder_folder(path: Optional[str]) -> Path:
    """The folder holding the autoencoder's config.json: `path` itself, or a pipeline's vqvae/ or vae/."""
    if not path:
        raise UserError(
            "autoencoder.path is not set; train one with `sparsedm train-autoencoder configs/autoencoder_openmoji_cpu.yaml "
            "--out AE` and pass autoencoder.path=AE"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(
            f"autoencoder.path={path} does not exist; train one there with `sparsedm train-autoencoder CONFIG --out {path}` "
            "or point it at a diffusers VQModel/AutoencoderKL folder"
        )
    _check_finished(root, path)
    for folder in (root, *(root / sub for sub in PIPELINE_SUBFOLDERS)):
        if (folder / "config.json").is_file():
            return folder
    raise UserError(
        f"autoencoder.path={path} holds no config.json (nor vqvae/ or vae/ with one); it is not a diffusers autoencoder folder"
    )


def _check_finished(root: Path, path: str) -> None:
    """A `sparsedm train-autoencoder` run folder (it has config.yaml, metrics.jsonl or checkpoints/) is an
    autoencoder only once training has finished: its weights come first, summary.json last."""
    if not any((root / name).exists() for name in (CONFIG, METRICS, CHECKPOINTS)):
        return  # a plain diffusers folder, or a pipeline's
    missing = [name for name in ("config.json", SUMMARY) if not (root / name).is_file()]
    if missing:
        raise UserError(
            f"autoencoder.path={path} is an autoencoder run that has not finished (no {' or '.join(missing)}); "
            f"finish it with `sparsedm train-autoencoder {root / CONFIG} --out {path} --resume`, or point at a finished one"
        )


class FirstStage:
    """A trained autoencoder in a local folder. Reading it costs only its config.json until `load`."""

    def __init__(self, path: Optional[str]):
        self.folder = find_autoencoder_folder(path)
        try:
            self.config = json.loads((self.folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.folder / 'config.json'} is not readable JSON ({type(exc).__name__})") from None
        class_name = self.config.get("_class_name")
        if class_name not in CLASSES:
            raise UserError(
                f"{self.folder} holds a {class_name}; autoencoder.path must be a VQModel or AutoencoderKL folder"
            )
        if not self._weights():
            raise UserError(
                f"{self.folder} has a config.json but no {WEIGHTS_PREFIX}.* weights; it is not a whole autoencoder"
            )
        self.class_name = class_name
        self.kind = KIND_OF_CLASS[class_name]
        self._model = None

    @property
    def latent_channels(self) -> int:
        """Channels of the latent the UNet sees (a VQ model's codebook dimension)."""
        if self.kind == "vq":
            return self.config.get("vq_embed_dim") or self.config.get("latent_channels", 3)
        return self.config.get("latent_channels", 4)

    @property
    def factor(self) -> int:
        """f, the downsampling factor: every encoder level but the last halves the resolution."""
        return 2 ** (len(self.config.get("block_out_channels", [64])) - 1)

    @property
    def scaling_factor(self) -> Optional[float]:
        """The folder's own latent scale, or None if its config.json does not state one."""
        value = self.config.get("scaling_factor")
        return float(value) if value is not None else None

    @property
    def image_size(self) -> Optional[int]:
        """The image size a `sparsedm train-autoencoder` run trained at (its metrics.json); None if not recorded."""
        try:
            return int(json.loads((self.folder / RUN_METRICS).read_text())["image_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @cached_property
    def identity(self) -> str:
        """sha256 of config.json and the weight files: equal iff it is the same autoencoder."""
        weights = self._weights()
        if not weights:  # deleted since the folder was opened
            raise UserError(f"{self.folder} has a config.json but no {WEIGHTS_PREFIX}.* weights")
        digest = hashlib.sha256()
        for path in [self.folder / "config.json", *weights]:
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def _weights(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(WEIGHTS_PREFIX) and p.is_file())

    def load(self, device) -> VQModel | AutoencoderKL:
        """The model on `device`, in eval mode with gradients off (loaded once)."""
        if self._model is None:
            try:
                model = CLASSES[self.class_name].from_pretrained(
                    self.folder, low_cpu_mem_usage=False
                )  # no accelerate here
                self._model = model.eval().requires_grad_(False)
            except (OSError, ValueError, RuntimeError) as exc:
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise UserError(f"cannot load the autoencoder in {self.folder}: {first_line}") from None
        return self._model.to(device)

    def release(self) -> None:
        """Free the weights (training the UNet needs only the cached latents)."""
        self._model = None
