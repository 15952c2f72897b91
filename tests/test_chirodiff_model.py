"""The ChiroDiff denoiser: shapes, padding isolation, parameter names the sparse engine relies on, training."""

import math
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from sparsedm.diffusion import DiffusionConfig, GaussianDiffusion
from sparsedm.errors import UserError
from sparsedm.models.chirodiff import ChiroDiffConfig, ChiroDiffDenoiser
from sparsedm.models.time_embedding import RandomFourierFeatures
from sparsedm.sparse.selection import select_sparse_parameters

TINY = ChiroDiffConfig(hidden_size=16, num_layers=2, time_embed_dim=8, num_train_timesteps=100)


def _mask(lengths, length):
    return torch.arange(length)[None] < torch.tensor(lengths)[:, None]


def _padded(x_real, mask, fill):
    """x_real (B, L_real, C) placed into a batch whose padded points hold `fill`."""
    out = torch.full((*mask.shape, x_real.shape[-1]), fill)
    out[:, : x_real.shape[1]] = x_real
    return out.masked_fill(~mask[..., None], fill)


def test_config_is_omegaconf_structured_with_chirodiffs_defaults():
    cfg = OmegaConf.to_object(OmegaConf.structured(ChiroDiffConfig))
    assert (cfg.in_channels, cfg.hidden_size, cfg.num_layers, cfg.bidirectional) == (3, 96, 3, True)
    assert cfg.dropout == 0.0


def test_forward_shape_and_zero_padded_outputs():
    model = ChiroDiffDenoiser(TINY)
    mask = _mask([7, 3, 1], 7)
    eps = model(torch.randn(3, 7, 3), torch.tensor([0, 50, 99]), mask)
    assert eps.shape == (3, 7, 3)
    assert (eps[~mask] == 0).all() and (eps[mask] != 0).all()


def test_real_outputs_ignore_padded_content_and_padding_length():
    model = ChiroDiffDenoiser(TINY).eval()
    lengths, t = [6, 2, 4], torch.tensor([3, 40, 99])
    x_real = torch.randn(3, 6, 3)
    short_mask, long_mask = _mask(lengths, 6), _mask(lengths, 11)
    reference = model(_padded(x_real, short_mask, 0.0), t, short_mask)
    for mask, fill in [(short_mask, 1e4), (long_mask, 0.0), (long_mask, -7.0), (long_mask, float("nan"))]:
        eps = model(_padded(x_real, mask, fill), t, mask)
        assert torch.isfinite(eps).all()
        assert torch.allclose(eps[:, :6][short_mask], reference[short_mask], atol=1e-6)


def test_a_full_mask_gives_the_same_outputs_as_no_mask():
    model = ChiroDiffDenoiser(TINY).eval()
    x, t = torch.randn(2, 5, 3), torch.tensor([10, 60])
    assert torch.allclose(model(x, t, torch.ones(2, 5, dtype=torch.bool)), model(x, t), atol=1e-6)


def test_bidirectional_every_point_depends_on_the_points_before_and_after_it():
    model = ChiroDiffDenoiser(TINY).eval()
    x, t = torch.randn(1, 5, 3), torch.tensor([20])
    changed = x.clone()
    changed[0, 2] += 1.0
    moved = (model(changed, t) - model(x, t)).abs().sum(-1)[0]
    assert (moved > 1e-6).all()


def test_output_depends_on_the_timestep():
    model = ChiroDiffDenoiser(TINY).eval()
    x = torch.randn(1, 5, 3).expand(2, 5, 3)
    eps = model(x, torch.tensor([1, 90]))
    assert not torch.allclose(eps[0], eps[1], atol=1e-4)


def test_parameter_names_the_sparse_engine_relies_on():
    model = ChiroDiffDenoiser(ChiroDiffConfig())  # paper size: 3 bidirectional layers
    assert isinstance(model.time_embedding, RandomFourierFeatures)
    assert isinstance(model.gru, torch.nn.GRU) and model.gru.bidirectional and model.gru.batch_first
    names = dict(model.named_parameters())
    for layer in range(3):
        for kind in ("ih", "hh"):
            assert f"gru.weight_{kind}_l{layer}" in names and f"gru.weight_{kind}_l{layer}_reverse" in names
    assert "gru.weight_ih_l3" not in names
    assert not [n for n in names if "time_embedding" in n]  # γ(t) has no weights: nothing to keep dense
    sparse = select_sparse_parameters(model)
    assert {"out_proj.weight", "final_proj.weight"} <= set(sparse) and len(sparse) == 14


def test_paper_config_has_the_reference_parameter_count_and_shapes():
    """ScoreFunc('birnn', inp_n_features=5, time_pe_features=8, n_internal=96, n_layer=3): GRU(5 + 8 -> 96) x 3
    bidirectional, out_proj Linear(192 -> 96), final_proj Linear(96 + 8 -> 3) (models/score.py:61-70, 110-113)."""
    model = ChiroDiffDenoiser(ChiroDiffConfig(hidden_size=96, num_layers=3, time_embed_dim=8, representation="delta"))
    H, gru_in = 96, 5 + 8
    expected = []
    for layer in range(3):
        width = gru_in if layer == 0 else 2 * H
        expected += 2 * [[3 * H, width], [3 * H, H], [3 * H], [3 * H]]
    expected += [[H, 2 * H], [H], [3, H + 8], [3]]
    shapes = [list(p.shape) for p in model.parameters()]
    assert sorted(shapes) == sorted(expected)
    assert sum(p.numel() for p in model.parameters()) == 416_859


@pytest.mark.parametrize("representation", ["delta", "absolute"])
def test_the_gru_reads_both_representations_then_gamma(representation):
    """create_posvel_aug_input (main.py:323-335): positions first, then deltas; the pen channel appears once."""
    model = ChiroDiffDenoiser(replace(TINY, representation=representation)).eval()
    x, t = torch.randn(2, 6, 3), torch.tensor([4, 71])
    seen = []
    model.gru.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(x, t)
    gru_input = seen[0]
    assert gru_input.shape == (2, 6, 5 + 8)
    if representation == "delta":
        expected = torch.cat([torch.cumsum(x[..., :2], dim=1), x], dim=-1)  # x, y, dx, dy, pen
    else:
        diffs = torch.cat([x[:, :1, :2], x[:, 1:, :2] - x[:, :-1, :2]], dim=1)
        expected = torch.cat([x, diffs], dim=-1)  # x, y, pen, dx, dy
    assert torch.allclose(gru_input[..., :5], expected, atol=1e-6)
    assert torch.equal(gru_input[..., 5:], model.time_embedding(t)[:, None].expand(2, 6, 8))


def test_the_output_is_a_linear_map_of_out_proj_and_gamma():
    model = ChiroDiffDenoiser(TINY).eval()
    x, t = torch.randn(2, 5, 3), torch.tensor([0, 99])
    seen = []
    model.out_proj.register_forward_hook(lambda module, args, out: seen.append(out))
    eps = model(x, t)
    assert seen[0].shape == (2, 5, TINY.hidden_size)
    gamma = model.time_embedding(t)[:, None].expand(2, 5, 8)
    W, b = model.final_proj.weight, model.final_proj.bias
    assert torch.allclose(eps, seen[0] @ W[:, : TINY.hidden_size].T + gamma @ W[:, TINY.hidden_size :].T + b, atol=1e-6)


def test_gamma_is_raw_random_fourier_features_of_t_over_T():
    """random_fourier_encoding_dyn (utils.py:32-35) at τ = t / T for the reference's t = 1..T (main.py:425-427)."""
    embedding = RandomFourierFeatures(embed_dim=8, scale=4.0, num_train_timesteps=35)
    assert not list(embedding.parameters())
    t = torch.arange(35)  # 0-based indices = the reference's t - 1
    angles = 2 * math.pi * ((t[:, None] + 1) / 35) * embedding.frequencies[None, :]
    assert torch.allclose(embedding(t), torch.cat([angles.sin(), angles.cos()], dim=-1), atol=1e-6)


def test_random_frequencies_are_a_saved_buffer_not_a_parameter():
    embedding = RandomFourierFeatures(embed_dim=1024, scale=4.0, num_train_timesteps=1000)
    assert "frequencies" not in dict(embedding.named_parameters())
    assert embedding.frequencies.std().item() == pytest.approx(4.0, rel=0.15)
    model = ChiroDiffDenoiser(TINY)
    torch.manual_seed(1)
    other = ChiroDiffDenoiser(TINY)
    assert not torch.equal(model.time_embedding.frequencies, other.time_embedding.frequencies)
    other.load_state_dict(model.state_dict())
    x, t = torch.randn(2, 4, 3), torch.tensor([5, 77])
    assert torch.equal(model(x, t), other(x, t))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_embed_dim": 7}, "time_embed_dim must be an even number"),
        ({"rff_scale": 0.0}, "rff_scale must be > 0"),
        ({"hidden_size": 0}, "hidden_size must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_configs_are_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        ChiroDiffDenoiser(ChiroDiffConfig(**{**TINY.__dict__, **changes}))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.tensor([[True, False, True, False]]), "prefix"),
        (torch.tensor([[False, False, False, False]]), "at least one real point"),
        (torch.tensor([[1, 1, 0, 0]]), "bool"),
    ],
)
def test_malformed_masks_are_rejected(mask, message):
    with pytest.raises(ValueError, match=message):
        ChiroDiffDenoiser(TINY)(torch.randn(1, 4, 3), torch.tensor([0]), mask)


def _circles(batch_size, length, generator):
    """Toy sketches: points evenly spaced round the unit circle from a random phase, random lengths."""
    mask = _mask(torch.randint(length // 2, length + 1, (batch_size,), generator=generator).tolist(), length)
    phase = torch.rand(batch_size, 1, generator=generator) * 2 * math.pi
    angle = phase + torch.arange(length) * (2 * math.pi / length)
    points = torch.stack([angle.cos(), angle.sin(), torch.zeros_like(angle)], dim=-1)
    return torch.where(mask[..., None], points, torch.zeros_like(points)), mask


def test_a_few_training_steps_lower_the_denoising_loss():
    diffusion = GaussianDiffusion(DiffusionConfig(num_train_timesteps=100))
    model = ChiroDiffDenoiser(ChiroDiffConfig(hidden_size=16, num_layers=1, num_train_timesteps=100))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_eval, mask_eval = _circles(256, 16, torch.Generator().manual_seed(123))

    def eval_loss():
        with torch.no_grad():
            fn = lambda x_t, t: model(x_t, t, mask_eval)  # noqa: E731
            return diffusion.loss(fn, x_eval, mask_eval, generator=torch.Generator().manual_seed(7)).item()

    before = eval_loss()
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        x0, mask = _circles(64, 16, generator)
        loss = diffusion.loss(lambda x_t, t: model(x_t, t, mask), x0, mask, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert eval_loss() < 0.5 * before
