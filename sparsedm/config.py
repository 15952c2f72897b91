"""Experiment configs: one typed structure per task, YAML files for the setups, dotted overrides.

    cfg = load_config("configs/chirodiff_kanjivg_cpu.yaml", ["sparse.method=rigl", "train.steps=500"])

The YAML names its `task`; the task's schema (below) gives every key its type and default, so an unknown key
or a value of the wrong type is rejected with a one-line message.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from sparsedm.autoencoder.config import FirstStageConfig
from sparsedm.config_loader import merge_config, read_yaml_and_overrides
from sparsedm.data.images.config import ImageDataConfig
from sparsedm.data.strokes.config import StrokeDataConfig
from sparsedm.diffusion.config import DiffusionConfig
from sparsedm.errors import UserError
from sparsedm.models.chirodiff import ChiroDiffConfig
from sparsedm.models.unet import UNetConfig
from sparsedm.sparse.config import SparseConfig
from sparsedm.train.config import DistConfig, SampleConfig, TrainConfig


def chirodiff_train() -> TrainConfig:
    """ChiroDiff clips the gradient norm at 0.1 (its config.yml:49)."""
    return TrainConfig(grad_clip=0.1)


def chirodiff_sample() -> SampleConfig:
    """ChiroDiff's DDPM scales the posterior noise by 0.75 (test_variance_strength, its config.yml:83)."""
    return SampleConfig(variance_strength=0.75)


@dataclass
class ChiroDiffExperiment:
    task: str = "chirodiff"  # the paper's sequence half: a BiGRU denoiser over pen strokes
    seed: int = 0  # seeds weights, data order and noise
    data: StrokeDataConfig = field(default_factory=StrokeDataConfig)
    model: ChiroDiffConfig = field(default_factory=ChiroDiffConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # T = 1000, linear β 1e-4 → 2e-2
    sparse: SparseConfig = field(default_factory=SparseConfig)
    train: TrainConfig = field(default_factory=chirodiff_train)
    sample: SampleConfig = field(default_factory=chirodiff_sample)
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
    train = cfg.train
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
    if cfg.sample.sampler not in ("ddpm", "ddim"):
        raise UserError(f"sample.sampler={cfg.sample.sampler!r} is unknown; use ddpm or ddim")
    if cfg.sample.steps < 1 or cfg.sample.num < 1:
        raise UserError("sample.steps and sample.num must be >= 1")


def sparse_config(cfg: DictConfig) -> SparseConfig:
    return SparseConfig(**OmegaConf.to_container(cfg.sparse))
