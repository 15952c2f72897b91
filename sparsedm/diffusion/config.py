"""Settings of the Gaussian diffusion process (noise schedule and what the denoiser predicts)."""

from dataclasses import dataclass


@dataclass
class DiffusionConfig:
    """The forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), ᾱ_t = prod_{s<=t} (1 - β_s).

    Defaults are ChiroDiff's setup; the Latent Diffusion setups use `scaled_linear`, 0.0015 -> 0.0195.
    """

    num_train_timesteps: int = 1000  # T, number of noise levels (paper: 1000 for every setup)
    beta_start: float = 1e-4  # β_1 (ChiroDiff 1e-4, LDM 0.0015)
    beta_end: float = 2e-2  # β_T (ChiroDiff 2e-2, LDM 0.0195)
    beta_schedule: str = "linear"  # linear (ChiroDiff) | scaled_linear (LDM: linear in sqrt(β))
    prediction_type: str = "epsilon"  # what the denoiser outputs: epsilon (paper) | sample | v_prediction
    clip_sample: bool = False  # clamp the predicted x_0 to [-1, 1] while sampling (data scaled to it)
    timestep_spacing: str = "leading"  # where steps < T sampling steps fall: leading | trailing | linspace
