"""Settings of the Gaussian diffusion process (noise schedule and what the denoiser predicts)."""

from dataclasses import dataclass
from enum import StrEnum

from sparsedm.errors import UserError, choice


class BetaSchedule(StrEnum):
    linear = "linear"  # β linear from beta_start to beta_end (ChiroDiff)
    scaled_linear = "scaled_linear"  # sqrt(β) linear (LDM)


class PredictionType(StrEnum):
    epsilon = "epsilon"  # the noise ε (paper)
    sample = "sample"  # x_0
    v_prediction = "v_prediction"  # v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0


class TimestepSpacing(StrEnum):
    leading = "leading"
    trailing = "trailing"
    linspace = "linspace"


class Sampler(StrEnum):
    ddpm = "ddpm"  # ancestral, stochastic (Ho et al. 2020)
    ddim = "ddim"  # η = 0 deterministic (Song et al. 2021)


@dataclass
class DiffusionConfig:
    """The forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), ᾱ_t = prod_{s<=t} (1 - β_s).

    Defaults are ChiroDiff's setup; the Latent Diffusion setups use `scaled_linear`, 0.0015 -> 0.0195.
    """

    num_train_timesteps: int = 1000  # T, number of noise levels (paper: 1000 for every setup)
    beta_start: float = 1e-4  # β_1 (ChiroDiff 1e-4, LDM 0.0015)
    beta_end: float = 2e-2  # β_T (ChiroDiff 2e-2, LDM 0.0195)
    beta_schedule: BetaSchedule = BetaSchedule.linear  # linear (ChiroDiff) | scaled_linear (LDM: linear in sqrt(β))
    # what the denoiser outputs: epsilon (paper) | sample | v_prediction
    prediction_type: PredictionType = PredictionType.epsilon
    clip_sample: bool = False  # clamp the predicted x_0 to [-1, 1] while sampling (data scaled to it)
    # where steps < T sampling steps fall: leading | trailing | linspace
    timestep_spacing: TimestepSpacing = TimestepSpacing.leading

    def __post_init__(self):
        if self.num_train_timesteps < 1:
            raise UserError(f"num_train_timesteps (T) must be >= 1, got {self.num_train_timesteps}")
        self.beta_schedule = choice(BetaSchedule, self.beta_schedule, "diffusion.beta_schedule")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise UserError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        self.prediction_type = choice(PredictionType, self.prediction_type, "diffusion.prediction_type")
        self.timestep_spacing = choice(TimestepSpacing, self.timestep_spacing, "diffusion.timestep_spacing")
