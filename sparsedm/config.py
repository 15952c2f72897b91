"""Experiment configs: one typed structure per task, YAML files for the setups, dotted overrides.

    cfg = load_config("configs/chirodiff_kanjivg_cpu.yaml", ["sparse.method=rigl", "train.steps=500"])
    cfg.sparse.sparsity, cfg.sample.sampler  # 0.5, Sampler.ddim: a ChiroDiffExperiment, checked
    cfg = load_autoencoder_config("configs/autoencoder_openmoji_cpu.yaml", ["train.steps=500"])

The YAML names its `task`; the task's schema (below) gives every key its type and default, so an unknown key,
a value of the wrong type or outside its closed set is rejected by OmegaConf with a one-line message; each
dataclass's `__post_init__` checks the ranges. See docs/configs.md.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from omegaconf import DictConfig, OmegaConf

from sparsedm.autoencoder.config import AutoencoderConfig, FirstStageConfig, ReconLoss
from sparsedm.config_checks import choose_run_length
from sparsedm.config_loader import merge_config, read_yaml_and_overrides, typed
from sparsedm.data.images.config import ImageDataConfig
from sparsedm.data.strokes.config import StrokeDataConfig
from sparsedm.diffusion.config import BetaSchedule, DiffusionConfig
from sparsedm.errors import UserError, choice
from sparsedm.models.chirodiff import ChiroDiffConfig
from sparsedm.models.dit import DiTConfig
from sparsedm.models.unet import UNetConfig
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse.config import SparseConfig
from sparsedm.train.config import DistConfig, SampleConfig, TrainConfig


class TaskExperiment:
    """What every experiment schema can do: build its task (the class TASKS below names for its `task`)."""

    def build_task(self):
        return TASKS[self.task].task_class()(self)


# "<configuration as the sweep names its runs, less the seed> vs <dense | small-dense>"
PRIMARY_COMPARISON = re.compile(
    r"^(?P<config>[a-z-]+(-S[0-9.]+)?(-p[0-9.]+)?(-b[0-9]+)?) vs (?P<against>dense|small-dense)$"
)


def check_primary_comparison(cfg) -> None:
    if cfg.primary_comparison is not None and not PRIMARY_COMPARISON.match(cfg.primary_comparison):
        raise UserError(
            f"primary_comparison={cfg.primary_comparison!r} is not '<configuration> vs <dense|small-dense>', "
            "e.g. 'rigl-S0.5-p0.1 vs small-dense' (the run name less its seed)"
        )


def check_small_dense(cfg) -> None:
    """small_dense is an S in (0, 1) of a dense run: a sparse method would sparsify the narrowed model too."""
    if cfg.small_dense is None:
        return
    if not 0 < cfg.small_dense < 1:
        raise UserError(f"small_dense={cfg.small_dense} must be an S in (0, 1), e.g. 0.5, or null")
    if cfg.sparse.method_record.sparse:
        raise UserError(
            f"small_dense={cfg.small_dense} narrows a dense model, but sparse.method={cfg.sparse.method}; "
            "set sparse.method=dense (or small_dense=null)"
        )


def chirodiff_train() -> TrainConfig:
    """ChiroDiff clips the gradient norm at 0.1 (its config.yml:49)."""
    return TrainConfig(grad_clip=0.1)


def chirodiff_sample() -> SampleConfig:
    """ChiroDiff's DDPM scales the posterior noise by 0.75 (test_variance_strength, its config.yml:83)."""
    return SampleConfig(variance_strength=0.75)


@dataclass
class ChiroDiffExperiment(TaskExperiment):
    task: str = "chirodiff"  # the paper's sequence half: a BiGRU denoiser over pen strokes
    seed: int = 0  # seeds weights, data order and noise
    data: StrokeDataConfig = field(default_factory=StrokeDataConfig)
    model: ChiroDiffConfig = field(default_factory=ChiroDiffConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # T = 1000, linear β 1e-4 → 2e-2
    sparse: SparseConfig = field(default_factory=SparseConfig)
    train: TrainConfig = field(default_factory=chirodiff_train)
    sample: SampleConfig = field(default_factory=chirodiff_sample)
    dist: DistConfig = field(default_factory=DistConfig)
    # S: Small-Dense, model.hidden_size narrowed to the non-zero count of S (tasks/width.py); with sparse.method=dense
    small_dense: Optional[float] = None
    # the study's one primary comparison, which `report` prints first, e.g. "rigl-S0.5-p0.1 vs small-dense"
    primary_comparison: Optional[str] = None

    def __post_init__(self):
        check_small_dense(self)
        check_primary_comparison(self)
        model_t, diffusion_t = self.model.num_train_timesteps, self.diffusion.num_train_timesteps
        if model_t != diffusion_t:
            raise UserError(
                f"model.num_train_timesteps={model_t} differs from diffusion.num_train_timesteps={diffusion_t}; "
                "the denoiser embeds t / T of the diffusion: set both to the same T"
            )
        data_representation = str(self.data.representation)
        if self.model.representation is None:  # unset: the denoiser reads what the data holds
            self.model.representation = data_representation
        elif self.model.representation != data_representation:
            raise UserError(
                f"model.representation={self.model.representation} differs from data.representation="
                f"{data_representation}; leave model.representation unset (null) to follow the data"
            )


def ldm_diffusion() -> DiffusionConfig:
    """LDM's process: T = 1000, β 0.0015 -> 0.0195 linear in sqrt(β) (diffusers' scaled_linear)."""
    return DiffusionConfig(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule=BetaSchedule.scaled_linear
    )


@dataclass
class LDMExperiment(TaskExperiment):
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
    # S: Small-Dense, model.base_channels narrowed to the non-zero count of S (tasks/width.py); with sparse.method=dense
    small_dense: Optional[float] = None
    # the study's one primary comparison, which `report` prints first, e.g. "rigl-S0.5-p0.1 vs small-dense"
    primary_comparison: Optional[str] = None

    def __post_init__(self):
        check_small_dense(self)
        check_primary_comparison(self)


@dataclass
class DiTExperiment(LDMExperiment):
    """Latent Diffusion with a Diffusion Transformer denoiser: every key but `model` is the ldm task's."""

    task: str = "dit"  # a DiT denoiser (diffusers' DiTTransformer2DModel, one class) over the same latents
    model: DiTConfig = field(default_factory=DiTConfig)  # DiT-S/2
    # S: Small-Dense, model.hidden_size narrowed to the non-zero count of S (tasks/width.py); with sparse.method=dense
    small_dense: Optional[float] = None


@dataclass
class AutoencoderTrainConfig(TrainConfig):
    """The training loop's settings with the autoencoder's defaults, and its objective: reconstruction only
    (LDM adds LPIPS and a patch GAN, which are not implemented here)."""

    steps: Optional[int] = 20000  # optimiser steps (or set `epochs`)
    batch_size: int = 12  # images per step (global, split over ranks with torchrun)
    lr: float = 1e-4  # Adam learning rate, constant (taming/LDM: 4.5e-6 x batch size x GPUs)
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])  # Adam's (β1, β2), as taming/LDM
    weight_decay: float = 0.0  # Adam's L2 penalty (taming/LDM: 0)
    grad_clip: Optional[float] = None  # clip the global gradient norm; null = off (taming/LDM)
    ema_decay: float = 0.0  # EMA of the weights, written at the end; 0 = the trained weights (taming/LDM)
    log_every: int = 50  # steps between lines of metrics.jsonl
    val_batches: int = 1  # batches of the validation loss; L1/MSE/PSNR always use the whole split
    sample_every: int = 0  # no TensorBoard sample grids: reconstructions.png shows the result
    recon_loss: ReconLoss = ReconLoss.l1  # pixel loss on [-1, 1] images: l1 | mse
    codebook_weight: float = 1.0  # vq: weight of the VQ loss (codebook term + 0.25 x commitment), taming's 1.0
    codebook_restart_every: int = 100  # vq: steps between restarts of codes unused since the last (0 = off)
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) || N(0, I)) (LDM-KL: 1e-6)

    def __post_init__(self):
        super().__post_init__()
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"train.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.5, 0.9]")
        self.recon_loss = choice(ReconLoss, self.recon_loss, "train.recon_loss")
        if self.codebook_weight < 0 or self.kl_weight < 0 or self.codebook_restart_every < 0:
            raise UserError("train.codebook_weight, train.kl_weight and train.codebook_restart_every must be >= 0")


@dataclass
class AutoencoderExperiment(TaskExperiment):
    """Latent Diffusion's first stage, trained dense by the same loop (no `sparse` block: nothing is sparse)."""

    task: str = "autoencoder"  # train it with `sparsedm train-autoencoder`; an ldm run points at its folder
    seed: int = 0  # seeds weights, data order, codebook restarts and the KL posterior's samples
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self):
        factor = self.model.downsampling_factor
        if self.data.image_size % factor:
            raise UserError(
                f"data.image_size={self.data.image_size} is not divisible by the downsampling factor f={factor}"
            )


def _chirodiff_task():
    from sparsedm.tasks.chirodiff import ChiroDiffTask

    return ChiroDiffTask


def _ldm_task():
    from sparsedm.tasks.ldm import LatentDiffusionTask

    return LatentDiffusionTask


def _dit_task():
    from sparsedm.tasks.dit import DiTTask

    return DiTTask


def _autoencoder_task():
    from sparsedm.tasks.autoencoder import AutoencoderTask

    return AutoencoderTask


@dataclass(frozen=True)
class TaskEntry:
    schema: type  # the experiment dataclass: every key of the task's configs, with its type and default
    task_class: Callable[[], type]  # its Task (sparsedm/tasks/), imported when first built
    command: str  # the command that trains it: train | train-autoencoder


# The one task registry: a task name (a config's `task:`) -> its schema and its class.
TASKS = {
    "chirodiff": TaskEntry(ChiroDiffExperiment, _chirodiff_task, "train"),
    "ldm": TaskEntry(LDMExperiment, _ldm_task, "train"),
    "dit": TaskEntry(DiTExperiment, _dit_task, "train"),
    "autoencoder": TaskEntry(AutoencoderExperiment, _autoencoder_task, "train-autoencoder"),
}
Experiment = ChiroDiffExperiment | LDMExperiment | DiTExperiment
SCHEMAS = {name: entry.schema for name, entry in TASKS.items() if entry.command == "train"}  # `sparsedm train`'s
# what a run folder may hold: an autoencoder's too (its task then says what a command can do with it)
RUN_SCHEMAS = {name: entry.schema for name, entry in TASKS.items()}


def _schema(task: str, schemas: dict = SCHEMAS):
    if task not in schemas:
        raise UserError(f"task={task!r} is unknown; use one of {', '.join(schemas)}")
    return schemas[task]


def load_config(path: Optional[str] = None, overrides: List[str] = (), task: Optional[str] = None) -> Experiment:
    """Schema defaults <- YAML file <- `key=value` overrides, checked; returns the task's experiment dataclass.

    The task (`task=` override, else the file's `task:`, else chirodiff) picks the schema.
    """
    file_cfg, override_cfg = read_yaml_and_overrides(path, overrides)
    task = task or override_cfg.get("task") or file_cfg.get("task") or "chirodiff"
    return _merged(_schema(task), (path or "the config", file_cfg), ("the command line", override_cfg))


def _merged(schema, *sources: tuple) -> Experiment | AutoencoderExperiment:
    """The schema's defaults <- each (name, part) of `sources` in order, typed and checked; the run length
    (train.steps or train.epochs) is the one the most specific source set (config_checks.choose_run_length)."""
    parts = [part for _, part in sources]
    run_length = choose_run_length([("the defaults", OmegaConf.structured(schema)), *sources])
    return typed(merge_config(schema, *parts, run_length))


def experiment(cfg: DictConfig) -> Experiment | AutoencoderExperiment:
    """The typed, checked experiment of a plain config (e.g. a run folder's config.yaml)."""
    return _merged(_schema(cfg.get("task") or "chirodiff", RUN_SCHEMAS), ("the run's config", cfg))


def load_autoencoder_config(path: Optional[str], overrides=()) -> AutoencoderExperiment:
    """Schema defaults <- YAML <- overrides for `train-autoencoder`, checked."""
    file_cfg, override_cfg = read_yaml_and_overrides(path, overrides)
    cfg = _merged(AutoencoderExperiment, (path or "the config", file_cfg), ("the command line", override_cfg))
    if cfg.task != "autoencoder":
        raise UserError(
            f"{path} is a task={cfg.task} config; train-autoencoder takes one such as configs/autoencoder_openmoji_cpu.yaml"
        )
    return cfg


def read_run_config(run: RunDir) -> Experiment:
    """The experiment a run folder was trained with (its config.yaml), typed and checked."""
    return experiment(run.read_config())
