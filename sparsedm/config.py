"""Experiment configs: one typed structure per task, YAML files for the setups, dotted overrides.

    cfg = load_config("configs/chirodiff_kanjivg_cpu.yaml", ["sparse.method=rigl", "train.steps=500"])
    cfg = load_autoencoder_config("configs/autoencoder_openmoji_cpu.yaml", ["train.steps=500"])

The YAML names its `task`; the task's schema (below) gives every key its type and default, so an unknown key
or a value of the wrong type is rejected with a one-line message.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from sparsedm.autoencoder.config import KINDS, RECON_LOSSES, AutoencoderConfig, FirstStageConfig
from sparsedm.config_loader import load_config as load_schema
from sparsedm.config_loader import merge_config, read_yaml_and_overrides
from sparsedm.data.images import check_config as check_image_data
from sparsedm.data.images.config import ImageDataConfig
from sparsedm.data.strokes.config import StrokeDataConfig
from sparsedm.diffusion.config import DiffusionConfig
from sparsedm.errors import UserError
from sparsedm.models.chirodiff import ChiroDiffConfig
from sparsedm.models.unet import UNetConfig
from sparsedm.sparse.config import SparseConfig
from sparsedm.train.config import DistConfig, SampleConfig, TrainConfig


@dataclass
class ChiroDiffExperiment:
    task: str = "chirodiff"  # the paper's sequence half: a BiGRU denoiser over pen strokes
    seed: int = 0  # seeds weights, data order and noise
    data: StrokeDataConfig = field(default_factory=StrokeDataConfig)
    model: ChiroDiffConfig = field(default_factory=ChiroDiffConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # T = 1000, linear β 1e-4 → 2e-2
    sparse: SparseConfig = field(default_factory=SparseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def ldm_diffusion() -> DiffusionConfig:
    """LDM's process: T = 1000, β 0.0015 -> 0.0195 linear in sqrt(β) (diffusers' scaled_linear)."""
    return DiffusionConfig(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear")


@dataclass
class LDMExperiment:
    task: str = "ldm"  # the paper's image half: a UNet denoiser over a frozen autoencoder's latents
    seed: int = 0  # seeds weights, data order and noise
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    autoencoder: FirstStageConfig = field(default_factory=FirstStageConfig)  # frozen and dense; path is required
    model: UNetConfig = field(default_factory=UNetConfig)  # LDM-4's UNet
    diffusion: DiffusionConfig = field(default_factory=ldm_diffusion)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    dist: DistConfig = field(default_factory=DistConfig)


@dataclass
class AutoencoderTrainConfig(TrainConfig):
    """The training loop's settings with the autoencoder's defaults, and its objective: reconstruction only
    (LDM adds LPIPS and a patch GAN, which are not implemented here)."""

    steps: int = 20000  # optimiser steps (or set `epochs`)
    batch_size: int = 12  # images per step (global, split over ranks with torchrun)
    lr: float = 1e-4  # Adam learning rate, constant (taming/LDM: 4.5e-6 x batch size x GPUs)
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])  # Adam's (β1, β2), as taming/LDM
    weight_decay: float = 0.0  # Adam's L2 penalty (taming/LDM: 0)
    grad_clip: Optional[float] = None  # clip the global gradient norm; null = off (taming/LDM)
    ema_decay: float = 0.0  # EMA of the weights, written at the end; 0 = the trained weights (taming/LDM)
    log_every: int = 50  # steps between lines of metrics.jsonl
    val_batches: int = 1  # batches of the validation loss; L1/MSE/PSNR always use the whole split
    recon_loss: str = "l1"  # pixel loss on [-1, 1] images: l1 | mse
    codebook_weight: float = 1.0  # vq: weight of the VQ loss (codebook term + 0.25 x commitment), taming's 1.0
    codebook_restart_every: int = 100  # vq: steps between restarts of codes unused since the last (0 = off)
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) || N(0, I)) (LDM-KL: 1e-6)


@dataclass
class AutoencoderExperiment:
    """Latent Diffusion's first stage, trained dense by the same loop (no `sparse` block: nothing is sparse)."""

    task: str = "autoencoder"  # train it with `sparsedm train-autoencoder`; an ldm run points at its folder
    seed: int = 0  # seeds weights, data order, codebook restarts and the KL posterior's samples
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)


SCHEMAS = {"chirodiff": ChiroDiffExperiment, "ldm": LDMExperiment}


def _schema(task: str):
    if task not in SCHEMAS:
        raise UserError(f"task={task!r} is unknown; use one of {', '.join(SCHEMAS)}")
    return SCHEMAS[task]


def load_config(path: Optional[str] = None, overrides: List[str] = (), task: Optional[str] = None) -> DictConfig:
    """Schema defaults <- YAML file <- `key=value` overrides, validated; returns a typed DictConfig.

    The task (`task=` override, else the file's `task:`, else chirodiff) picks the schema.
    """
    file_cfg, override_cfg = read_yaml_and_overrides(path, overrides)
    task = task or override_cfg.get("task") or file_cfg.get("task") or "chirodiff"
    cfg = merge_config(_schema(task), file_cfg, override_cfg)
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Range checks that types alone cannot express; each failure is one line saying what to change."""
    SparseConfig(**OmegaConf.to_container(cfg.sparse)).validate()
    validate_train(cfg.train)
    if cfg.sample.sampler not in ("ddpm", "ddim"):
        raise UserError(f"sample.sampler={cfg.sample.sampler!r} is unknown; use ddpm or ddim")
    if cfg.sample.steps < 1 or cfg.sample.num < 1:
        raise UserError("sample.steps and sample.num must be >= 1")


def validate_train(train) -> None:
    """The training loop's settings (any task)."""
    if train.steps < 1 and not train.epochs:
        raise UserError(f"train.steps={train.steps} must be >= 1")
    if train.epochs is not None and train.epochs < 1:
        raise UserError(f"train.epochs={train.epochs} must be >= 1 (or null to use train.steps)")
    if train.batch_size < 1:
        raise UserError(f"train.batch_size={train.batch_size} must be >= 1")
    if train.lr <= 0:
        raise UserError(f"train.lr={train.lr} must be > 0")
    if train.weight_decay < 0:
        raise UserError(f"train.weight_decay={train.weight_decay} must be >= 0")
    if not 0 <= train.ema_decay < 1:
        raise UserError(f"train.ema_decay={train.ema_decay} must be in [0, 1)")
    if train.precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"train.precision={train.precision!r} is unknown; use fp32, bf16 or fp16")
    if train.checkpoint_every < 1 or train.log_every < 1 or train.keep_checkpoints < 1:
        raise UserError("train.checkpoint_every, train.log_every and train.keep_checkpoints must be >= 1")


def load_autoencoder_config(path: Optional[str], overrides=()) -> DictConfig:
    """Schema defaults <- YAML <- overrides for `train-autoencoder`, validated."""
    cfg = load_schema(path, overrides, AutoencoderExperiment)
    if cfg.task != "autoencoder":
        raise UserError(
            f"{path} is a task={cfg.task} config; train-autoencoder takes one such as configs/autoencoder_openmoji_cpu.yaml"
        )
    validate_autoencoder_experiment(cfg)
    return cfg


def validate_autoencoder_experiment(cfg) -> None:
    check_image_data(cfg.data)
    model, train = cfg.model, cfg.train
    if model.kind not in KINDS:
        raise UserError(f"model.kind={model.kind!r} is unknown; use vq or kl")
    if (
        not model.block_out_channels
        or min(model.block_out_channels) < 1
        or model.layers_per_block < 1
        or model.latent_channels < 1
    ):
        raise UserError("model.block_out_channels, model.layers_per_block and model.latent_channels must be positive")
    if any(c % model.norm_num_groups for c in model.block_out_channels):
        raise UserError(
            f"model.norm_num_groups={model.norm_num_groups} must divide every entry of model.block_out_channels"
        )
    if model.kind == "vq" and model.num_vq_embeddings < 2:
        raise UserError(f"model.num_vq_embeddings={model.num_vq_embeddings} must be >= 2")
    factor = 2 ** (len(model.block_out_channels) - 1)
    if cfg.data.image_size % factor:
        raise UserError(f"data.image_size={cfg.data.image_size} is not divisible by the downsampling factor f={factor}")
    validate_train(train)
    if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
        raise UserError(f"train.betas={list(train.betas)} must be two numbers in [0, 1), e.g. [0.5, 0.9]")
    if train.recon_loss not in RECON_LOSSES:
        raise UserError(f"train.recon_loss={train.recon_loss!r} is unknown; use l1 or mse")
    if train.codebook_weight < 0 or train.kl_weight < 0 or train.codebook_restart_every < 0:
        raise UserError("train.codebook_weight, train.kl_weight and train.codebook_restart_every must be >= 0")


def sparse_config(cfg: DictConfig) -> SparseConfig:
    return SparseConfig(**OmegaConf.to_container(cfg.sparse))
