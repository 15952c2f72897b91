"""The Gaussian diffusion process: the denoising training loss and DDPM / DDIM sampling.

Model-agnostic: the denoiser is any `model_fn(x_t, t) -> prediction`, where `x_t` has the data's shape and
`t` holds one integer timestep per sample. Sequence data with padding passes a `mask` (real points True) of
shape `x.shape[:mask.ndim]`; it broadcasts over the trailing (channel) dims. Noise levels and update rules
come from diffusers' schedulers (Ho et al. 2020, eq. 4 and 7; Song et al. 2021, eq. 12).
"""

import numbers
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from sparsedm.diffusion.config import DiffusionConfig, Sampler
from sparsedm.errors import UserError, choice
from sparsedm.progress import progress_bar

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    """Training loss and samplers for the process set by a `DiffusionConfig`.

    `betas` is β_t and `alphas_cumprod` is ᾱ_t, indexed by t = 0..T-1.
    """

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.num_train_timesteps = cfg.num_train_timesteps  # T
        # Only add_noise / get_velocity are used from this one; samplers get fresh instances because
        # set_timesteps mutates a scheduler.
        self._train_scheduler = self.scheduler("ddpm")
        self.betas = self._train_scheduler.betas  # β_t
        self.alphas_cumprod = self._train_scheduler.alphas_cumprod  # ᾱ_t

    def scheduler(self, sampler: str, variance_strength: float = 1.0) -> DDPMScheduler | DDIMScheduler:
        """A diffusers scheduler (ddpm | ddim) with this process's noise schedule; `sparsedm export` ships the ddim one.

        variance_strength (ddpm only): the posterior's standard deviation is multiplied by it (see `sample`).
        """
        common = dict(
            num_train_timesteps=self.cfg.num_train_timesteps,
            beta_start=self.cfg.beta_start,
            beta_end=self.cfg.beta_end,
            beta_schedule=str(self.cfg.beta_schedule),
            prediction_type=str(self.cfg.prediction_type),
            clip_sample=self.cfg.clip_sample,
            timestep_spacing=str(self.cfg.timestep_spacing),
        )
        if sampler == "ddpm":
            # fixed_small: σ_t² = β̃_t, the posterior variance of q(x_{t-1} | x_t, x_0) (DDPM's choice).
            if variance_strength == 1.0:
                return DDPMScheduler(variance_type="fixed_small", **common)
            scheduler = _ScaledNoiseDDPMScheduler(variance_type="fixed_small", **common)
            scheduler.variance_strength = variance_strength
            return scheduler
        # set_alpha_to_one: the last step lands on x_0 itself (ᾱ = 1), not on x at t = 0.
        return DDIMScheduler(set_alpha_to_one=True, **common)

    def draw(self, shape: tuple[int, ...], seeds: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, ε) for a batch of `shape`, sample i drawn from its own generator seeded with seeds[i].

        Each sample's noise depends only on its seed, not on the batch it sits in, so a global batch split
        over ranks (or padded to another length) gets exactly the noise it would get in one process.
        Noise is drawn on the CPU for `shape[1:]` and moved to `device`.
        """
        ts, noises = [], []
        for seed in seeds.tolist():
            generator = torch.Generator().manual_seed(int(seed))
            ts.append(torch.randint(0, self.num_train_timesteps, (1,), generator=generator))
            noises.append(torch.randn(tuple(shape[1:]), generator=generator))
        return torch.cat(ts).to(device), torch.stack(noises).to(device)

    def loss(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Simple DDPM loss E_{t, ε} |target - model_fn(x_t, t)|², target = ε for ε-prediction.

        t ~ U{0, ..., T-1}, ε ~ N(0, I) (drawn from `generator` unless given, e.g. by `draw`),
        x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε. The squared error is averaged within each sample, then over
        the batch, so every sample weighs the same (ChiroDiff's reduction) and equal shards of a batch
        average to the whole batch's loss. With `mask`, padded entries of x_t are zeroed before the model
        sees them and each sample's mean runs over its real points only.
        """
        batch_size = x0.shape[0]
        if t is None:
            rng_device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=rng_device)
        t = t.to(x0.device)
        if noise is None:
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # ε
        noise = noise.to(device=x0.device, dtype=x0.dtype)
        x_t = self._train_scheduler.add_noise(x0, noise, t)
        keep = None if mask is None else _broadcast_mask(mask, x0.shape)
        if keep is not None:
            x_t = torch.where(keep, x_t, torch.zeros_like(x_t))

        prediction = model_fn(x_t, t)
        if self.cfg.prediction_type == "epsilon":
            target = noise
        elif self.cfg.prediction_type == "sample":
            target = x0
        else:
            target = self._train_scheduler.get_velocity(x0, noise, t)

        squared_error = ((prediction.float() - target.float()) ** 2).flatten(1)
        if keep is None:
            return squared_error.mean(dim=1).mean()
        # where, not multiply: a NaN or inf at a padded point must not leak into the sum.
        keep = keep.expand(x0.shape).flatten(1)
        squared_error = torch.where(keep, squared_error, torch.zeros_like(squared_error))
        return (squared_error.sum(dim=1) / keep.sum(dim=1)).mean()

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...] | torch.Size,
        *,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        variance_strength: float = 1.0,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw samples x_0 of `shape` by running the reverse process from x_T ~ N(0, I).

        sampler: "ddpm" (ancestral, stochastic) or "ddim" (η = `eta`; 0 is deterministic, 1 is DDPM-like).
        steps: number of denoising steps, 1..T; None means all T.
        variance_strength: DDPM only: x_{t-1} = μ_θ(x_t, t) + s σ_t z, i.e. the posterior variance times s²
            (ChiroDiff's `test_variance_strength`, 0.75 in its config.yml; 1 is plain DDPM). The ddim sampler
            ignores it: there the reference's same knob is η (`eta`).
        mask: real points True; padded entries are held at zero throughout.
        device: where to sample; defaults to the mask's device, else CPU.
        Deterministic for a given `generator` state (a CPU generator also works for a GPU `device`).
        """
        sampler = choice(Sampler, sampler, "sampler")
        T = self.num_train_timesteps
        steps = T if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= T:
            raise UserError(f"sampling steps must be an integer from 1 to T = {T}, got {steps!r}")
        if eta < 0:
            raise UserError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
        if sampler == "ddpm" and eta != 0:
            raise UserError(f"eta={eta} applies only to the ddim sampler; set sampler=ddim or eta=0")
        if variance_strength < 0:
            raise UserError(f"variance_strength must be >= 0 (1 = plain DDPM, ChiroDiff 0.75), got {variance_strength}")

        if device is None:
            device = mask.device if mask is not None else torch.device("cpu")
        keep = None if mask is None else _broadcast_mask(mask.to(device), tuple(shape))
        scheduler = self.scheduler(sampler, variance_strength)
        scheduler.set_timesteps(steps, device=device)
        step_kwargs = {"eta": eta} if sampler == "ddim" else {}

        x = randn_tensor(tuple(shape), generator=generator, device=device) * scheduler.init_noise_sigma  # x_T
        for t in progress_bar(scheduler.timesteps, desc=f"{sampler} sampling", disable=not progress):
            if keep is not None:
                x = torch.where(keep, x, torch.zeros_like(x))
            model_output = model_fn(x, t.expand(x.shape[0]))
            x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
        if keep is not None:
            x = torch.where(keep, x, torch.zeros_like(x))
        return x


class _ScaledNoiseDDPMScheduler(DDPMScheduler):
    """DDPM whose noise term s σ_t z has its standard deviation scaled by `variance_strength` = s.

    ChiroDiff's `reverse_purturb_DDPM` (main.py:522-534): mean + sqrt(β̃_t) z * noise_weight.
    """

    variance_strength = 1.0

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        return super()._get_variance(t, predicted_variance, variance_type) * self.variance_strength**2


def _broadcast_mask(mask: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Check that a bool `mask` covers the leading dims of `shape`; view it to broadcast over the rest."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = real point), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape[: mask.ndim]):
        raise ValueError(f"mask shape {tuple(mask.shape)} must match the leading dims of {tuple(shape)}")
    return mask.reshape(*mask.shape, *([1] * (len(shape) - mask.ndim)))
