"""The Gaussian diffusion process: schedules, the training loss, DDPM/DDIM sampling, input checks."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from sparsedm.diffusion import DiffusionConfig, GaussianDiffusion
from sparsedm.errors import UserError

CHIRODIFF = DiffusionConfig()  # linear 1e-4 -> 2e-2
LDM = DiffusionConfig(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _noise_of(diffusion, x0):
    """An oracle denoiser for known x0: inverts x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε for ε."""

    def eps(x_t, t):
        alpha_bar = _expand(diffusion.alphas_cumprod[t], x_t)
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    return eps


def _gaussian_oracle(diffusion, mu, sigma):
    """E[ε | x_t] when every coordinate of x0 ~ N(mu, sigma²): the optimal ε-predictor, in closed form."""

    def eps(x_t, t):
        alpha_bar = _expand(diffusion.alphas_cumprod[t], x_t)
        variance = alpha_bar * sigma**2 + (1 - alpha_bar)  # Var(x_t)
        return (1 - alpha_bar).sqrt() / variance * (x_t - alpha_bar.sqrt() * mu)

    return eps


def test_config_is_omegaconf_structured():
    cfg = OmegaConf.structured(DiffusionConfig)
    cfg.merge_with_dotlist(["beta_schedule=scaled_linear", "beta_start=0.0015", "beta_end=0.0195"])
    assert OmegaConf.to_object(cfg) == LDM


def test_linear_schedule_is_chirodiffs():
    betas = GaussianDiffusion(CHIRODIFF).betas.double()
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(2e-2)
    steps = betas.diff()
    assert torch.allclose(steps, steps.mean(), atol=1e-8)


def test_scaled_linear_schedule_is_linear_in_sqrt_beta():
    diffusion = GaussianDiffusion(LDM)
    betas = diffusion.betas.double()
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0195)
    sqrt_steps = betas.sqrt().diff()
    assert torch.allclose(sqrt_steps, sqrt_steps.mean(), atol=1e-7)
    assert not torch.allclose(betas.diff(), betas.diff().mean(), atol=1e-8)
    assert torch.allclose(diffusion.alphas_cumprod, torch.cumprod(1 - diffusion.betas, 0))


def test_loss_of_a_zero_model_is_the_variance_of_the_noise():
    x0 = torch.randn(256, 16, 3)
    loss = GaussianDiffusion(CHIRODIFF).loss(lambda x_t, t: torch.zeros_like(x_t), x0)
    assert loss.item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_of_an_oracle_is_zero(prediction_type):
    diffusion = GaussianDiffusion(dataclasses.replace(CHIRODIFF, prediction_type=prediction_type))
    x0 = torch.randn(64, 8, 3)
    noise_of = _noise_of(diffusion, x0)

    def oracle(x_t, t):
        eps = noise_of(x_t, t)
        alpha_bar = _expand(diffusion.alphas_cumprod[t], x_t)
        return {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0,
        }[prediction_type]

    assert diffusion.loss(oracle, x0).item() < 1e-6
    assert diffusion.loss(lambda x_t, t: torch.zeros_like(x_t), x0).item() > 0.1


def test_padded_points_change_neither_the_model_input_nor_the_loss():
    diffusion = GaussianDiffusion(CHIRODIFF)
    lengths = torch.tensor([5, 12, 1, 8])
    mask = torch.arange(12)[None] < lengths[:, None]
    x0 = torch.randn(4, 12, 3)
    junk = torch.where(mask[..., None], x0, torch.full_like(x0, 1e3))
    junk[0, -1] = float("nan")

    def mixing_model(x_t, t):
        # Every output sees the whole sequence, and padded outputs are garbage: padding must not leak.
        out = x_t.mean(dim=1, keepdim=True).expand_as(x_t).clone()
        out[~mask] = 1e6
        return out

    seed = 3
    clean = diffusion.loss(mixing_model, x0, mask, generator=torch.Generator().manual_seed(seed))
    dirty = diffusion.loss(mixing_model, junk, mask, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(clean) and clean.item() == dirty.item()


def test_masked_loss_averages_over_real_points_only():
    x0 = torch.randn(512, 10, 3)
    mask = torch.arange(10)[None] < torch.randint(1, 11, (512, 1))
    loss = GaussianDiffusion(CHIRODIFF).loss(lambda x_t, t: torch.zeros_like(x_t), x0, mask)
    assert loss.item() == pytest.approx(1.0, abs=0.05)  # dividing by all points would give ~0.55


def test_loss_is_deterministic_given_a_generator():
    diffusion, x0 = GaussianDiffusion(CHIRODIFF), torch.randn(8, 4, 3)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    first = diffusion.loss(zero, x0, generator=torch.Generator().manual_seed(1))
    again = diffusion.loss(zero, x0, generator=torch.Generator().manual_seed(1))
    other = diffusion.loss(zero, x0, generator=torch.Generator().manual_seed(2))
    assert first.item() == again.item() != other.item()


@pytest.mark.parametrize("cfg", [CHIRODIFF, LDM], ids=["linear", "scaled_linear"])
@pytest.mark.parametrize(
    ("sampler", "steps", "eta"), [("ddpm", None, 0.0), ("ddpm", 20, 0.0), ("ddim", 20, 0.0), ("ddim", 20, 1.0)]
)
def test_sampling_a_constant_with_its_optimal_denoiser_returns_the_constant(cfg, sampler, steps, eta):
    diffusion, c = GaussianDiffusion(cfg), 0.7
    # For x0 = c the optimal ε̂(x_t, t) = (x_t - sqrt(ᾱ_t) c) / sqrt(1 - ᾱ_t).
    x = diffusion.sample(
        _noise_of(diffusion, c),
        (16, 6, 3),
        sampler=sampler,
        steps=steps,
        eta=eta,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(x, torch.full_like(x, c), atol=1e-3)


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", None), ("ddim", 250)])
def test_sampling_with_the_optimal_denoiser_reproduces_a_gaussian(sampler, steps):
    """Mean and spread both come out right, so the injected noise and the step rule are right too."""
    diffusion, mu, sigma = GaussianDiffusion(CHIRODIFF), 2.0, 0.5
    x = diffusion.sample(
        _gaussian_oracle(diffusion, mu, sigma),
        (4000, 2),
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(sigma, abs=0.02)


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sampling_is_deterministic_given_a_generator(sampler, eta):
    diffusion = GaussianDiffusion(CHIRODIFF)
    model = lambda x_t, t: 0.5 * x_t  # noqa: E731

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return diffusion.sample(model, (4, 5, 3), sampler=sampler, steps=10, eta=eta, generator=generator)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samples_are_finite_and_zero_at_padded_points(sampler):
    diffusion = GaussianDiffusion(CHIRODIFF)
    mask = torch.arange(9)[None] < torch.tensor([[9], [4], [1]])
    seen_padding = []

    def model(x_t, t):
        seen_padding.append(x_t[~mask].abs().max().item())
        return 0.5 * x_t

    x = diffusion.sample(model, (3, 9, 3), sampler=sampler, steps=10, mask=mask)
    assert torch.isfinite(x).all()
    assert (x[~mask] == 0).all() and (x[mask] != 0).all()
    assert max(seen_padding) == 0.0  # the model never sees non-zero padding either


def test_progress_bar_is_shown_on_request(capsys):
    diffusion = GaussianDiffusion(CHIRODIFF)
    diffusion.sample(lambda x_t, t: x_t, (2, 3), sampler="ddim", steps=3, progress=True)
    assert "ddim sampling" in capsys.readouterr().err
    diffusion.sample(lambda x_t, t: x_t, (2, 3), sampler="ddim", steps=3)
    assert capsys.readouterr().err == ""


def test_ddpm_variance_strength_scales_the_noise_term():
    """ChiroDiff's reverse_purturb_DDPM (main.py:522-534): x_{t-1} = μ + s sqrt(β̃_t) z. With a linear denoiser
    x_0 = A x_T + s Σ B_t z_t for the same draws, so the samples are affine in s."""
    diffusion = GaussianDiffusion(dataclasses.replace(CHIRODIFF, num_train_timesteps=20))

    def draw(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return diffusion.sample(lambda x_t, t: 0.3 * x_t, (4, 6), sampler="ddpm", generator=generator, **kwargs)

    plain, none, half, three_quarters = (draw(variance_strength=s) for s in (1.0, 0.0, 0.5, 0.75))
    assert torch.equal(plain, draw())  # 1 is diffusers' DDPM, untouched (LDM's sampler)
    assert torch.allclose(half - none, 0.5 * (plain - none), atol=1e-5)
    assert torch.allclose(three_quarters - none, 0.75 * (plain - none), atol=1e-5)
    assert (plain - none).abs().max() > 0.1
    generator = torch.Generator().manual_seed(3)
    ddim = diffusion.sample(lambda x_t, t: 0.3 * x_t, (4, 6), sampler="ddim", steps=5, generator=generator)
    generator = torch.Generator().manual_seed(3)
    kwargs = dict(sampler="ddim", steps=5, generator=generator, variance_strength=0.5)
    assert torch.equal(ddim, diffusion.sample(lambda x_t, t: 0.3 * x_t, (4, 6), **kwargs))  # η is DDIM's knob


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "euler"}, "sampler='euler' is unknown; use ddpm or ddim"),
        ({"steps": 0}, "from 1 to T"),
        ({"steps": 1001}, "from 1 to T"),
        ({"sampler": "ddim", "steps": 10, "eta": -0.5}, "eta must be >= 0"),
        ({"sampler": "ddpm", "eta": 1.0}, "only to the ddim sampler"),
        ({"sampler": "ddpm", "variance_strength": -0.1}, "variance_strength must be >= 0"),
    ],
)
def test_bad_sampling_arguments_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        GaussianDiffusion(CHIRODIFF).sample(lambda x_t, t: x_t, (2, 3), **kwargs)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"beta_schedule": "cosine"}, "beta_schedule='cosine' is unknown"),
        ({"prediction_type": "score"}, "prediction_type='score' is unknown"),
        ({"timestep_spacing": "even"}, "timestep_spacing='even' is unknown"),
        ({"beta_start": 0.03}, "beta_start <= beta_end"),
        ({"num_train_timesteps": 0}, "must be >= 1"),
    ],
)
def test_bad_configs_are_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        GaussianDiffusion(dataclasses.replace(CHIRODIFF, **changes))
