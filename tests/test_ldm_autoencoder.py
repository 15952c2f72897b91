"""The first stage: training lowers the reconstruction error, the folder is diffusers' own format with the
latent scaling factor LDM uses (1.0 for VQ, 1/std for KL), and a bad autoencoder folder gets a one-line error."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel, VQModel
from fid_stub import use_pooled_pixels
from ldm_helpers import SIZE, ldm_overrides, train_tiny_autoencoder, write_shapes
from PIL import Image

from sparsedm.autoencoder import FirstStage, encode, latent_std
from sparsedm.autoencoder.latents import LatentDataset
from sparsedm.cli import main
from sparsedm.data.images import to_model_tensor
from sparsedm.errors import UserError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.mark.parametrize("kind, model_class", [("vq", VQModel), ("kl", AutoencoderKL)])
def test_training_lowers_the_reconstruction_error(tmp_path, images, kind, model_class):
    metrics = train_tiny_autoencoder(images, tmp_path / "cache", tmp_path / "ae", kind=kind)
    # measured here: vq L1 0.98 -> 0.14, kl 0.93 -> 0.13 (60 steps); a broken loss or optimiser stays near 0.9
    assert metrics["val_l1_after"] < 0.5 * metrics["val_l1_before"], metrics
    assert metrics["val_psnr_after"] > metrics["val_psnr_before"] + 3
    assert metrics["latent_shape"] == [3, 4, 4] and metrics["downsampling_factor"] == 4
    assert json.loads((tmp_path / "ae" / "metrics.json").read_text()) == metrics

    model = model_class.from_pretrained(tmp_path / "ae")  # diffusers' own loader
    assert model.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    first_stage = FirstStage(str(tmp_path / "ae"))
    assert (first_stage.kind, first_stage.latent_channels, first_stage.factor) == (kind, 3, 4)
    # the stored factor is LDM's: 1.0 for vq (unscaled latents), 1/std of the training latents for kl
    with torch.no_grad():
        x = to_model_tensor(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(images.iterdir())]))
        mean, std = encode(model, x)
    assert latent_std(LatentDataset(mean, std)) == pytest.approx(metrics["latent_std"], rel=0.15)
    expected = 1.0 if kind == "vq" else 1.0 / metrics["latent_std"]
    assert metrics["scaling_factor"] == pytest.approx(expected)


def test_the_identity_follows_the_weights(tmp_path, images):
    train_tiny_autoencoder(images, tmp_path / "cache", tmp_path / "ae", steps=2)
    before = FirstStage(str(tmp_path / "ae")).identity
    model = VQModel.from_pretrained(tmp_path / "ae")
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(0.01)
    model.save_pretrained(tmp_path / "ae")
    assert FirstStage(str(tmp_path / "ae")).identity != before


def test_an_existing_autoencoder_is_not_overwritten(tmp_path, images, capsys):
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "config.json").write_text("{}")
    code = main(
        [
            "train-autoencoder",
            "configs/autoencoder_openmoji_cpu.yaml",
            "--out",
            str(tmp_path / "ae"),
            "--no-progress",
            "data.name=folder",
            f"data.path={images}",
            "train.steps=1",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already holds an autoencoder" in err and "\n" not in err
    assert (tmp_path / "ae" / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.kind=gan"], "model.kind='gan' is unknown; use vq or kl"),
        (
            ["model.block_out_channels=[8,16,16]", "data.image_size=18"],
            "data.image_size=18 is not divisible by the downsampling factor f=4",
        ),
        (["train.recon_loss=lpips"], "train.recon_loss='lpips' is unknown"),
        (["model.norm_num_groups=5"], "must divide every entry of model.block_out_channels"),
        (["train.lr=0"], "train.lr=0.0 must be > 0"),
        (["model.latent_chanels=4"], "Key 'latent_chanels' not in 'AutoencoderConfig'"),
        (["data.name=celebahq"], "data.name=celebahq needs data.path"),
    ],
)
def test_bad_autoencoder_config_gives_one_line_error(tmp_path, capsys, overrides, message):
    code = main(
        ["train-autoencoder", "configs/autoencoder_openmoji_cpu.yaml", "--out", str(tmp_path / "ae"), *overrides]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sparsedm: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "ae").exists()


def test_an_ldm_config_is_refused_by_train_autoencoder(tmp_path, capsys):
    assert main(["train-autoencoder", "configs/ldm_openmoji_cpu.yaml", "--out", str(tmp_path / "ae")]) == 2
    assert "not in 'AutoencoderExperiment'" in capsys.readouterr().err


def test_bad_autoencoder_folders_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="autoencoder.path is not set"):
        FirstStage(None)
    with pytest.raises(UserError, match="does not exist; train one there with `sparsedm train-autoencoder"):
        FirstStage(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no config.json"):
        FirstStage(str(tmp_path / "empty"))
    UNet2DModel(
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    ).save_pretrained(tmp_path / "unet")
    with pytest.raises(
        UserError, match="holds a UNet2DModel; autoencoder.path must be a VQModel or AutoencoderKL folder"
    ):
        FirstStage(str(tmp_path / "unet"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="is not readable JSON"):
        FirstStage(str(tmp_path / "broken"))


@pytest.fixture(scope="module")
def finished_autoencoder(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("finished") / "ae"
    train_tiny_autoencoder(images, out.parent / "cache", out, steps=2)
    return out


def _train_ldm(tmp_path, images, autoencoder, capsys, *extra) -> tuple[int, str]:
    overrides = [*ldm_overrides(images, tmp_path / "cache", autoencoder), "train.steps=1", *extra]
    code = main(["train", "configs/ldm_openmoji_cpu.yaml", "--out", str(tmp_path / "ldm"), "--no-progress", *overrides])
    return code, capsys.readouterr().err.strip()


def test_an_unfinished_autoencoder_run_is_refused_in_one_line(tmp_path, images, finished_autoencoder, capsys):
    paused = tmp_path / "paused"
    assert train_tiny_autoencoder(images, tmp_path / "cache", paused, steps=4, extra=["train.stop_at=2"]) is None
    assert (paused / "checkpoints").is_dir() and not (paused / "config.json").exists()  # paused before its weights
    code, err = _train_ldm(tmp_path, images, paused, capsys)
    assert code == 2 and err.startswith("sparsedm: error:") and "\n" not in err, err
    assert (
        f"autoencoder.path={paused} is an autoencoder run that has not finished (no config.json or summary.json)" in err
    )
    assert f"`sparsedm train-autoencoder {paused / 'config.yaml'} --out {paused} --resume`" in err
    assert not (tmp_path / "ldm").exists()

    # weights written, summary not yet (training on, or stopped between the two)
    shutil.copytree(finished_autoencoder, tmp_path / "no_summary")
    (tmp_path / "no_summary" / "summary.json").unlink()
    code, err = _train_ldm(tmp_path, images, tmp_path / "no_summary", capsys)
    assert code == 2 and "has not finished (no summary.json)" in err and "\n" not in err, err

    shutil.copytree(finished_autoencoder, tmp_path / "no_weights")
    (tmp_path / "no_weights" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = _train_ldm(tmp_path, images, tmp_path / "no_weights", capsys)
    assert code == 2 and "has a config.json but no diffusion_pytorch_model.* weights" in err and "\n" not in err, err


def test_a_missing_autoencoder_is_refused_in_one_line(tmp_path, images, capsys):
    code, err = _train_ldm(tmp_path, images, tmp_path / "nowhere", capsys)
    assert code == 2 and "\n" not in err, err
    assert f"autoencoder.path={tmp_path / 'nowhere'} does not exist; train one there with" in err


def test_an_autoencoder_of_another_image_size_is_refused_in_one_line(tmp_path, images, finished_autoencoder, capsys):
    code, err = _train_ldm(tmp_path, images, finished_autoencoder, capsys, f"data.image_size={2 * SIZE}")
    assert code == 2 and "\n" not in err, err
    assert f"was trained on {SIZE} px images, not data.image_size={2 * SIZE}" in err
    assert not (tmp_path / "ldm").exists()


def test_a_pipeline_folder_is_searched_for_its_vqvae(tmp_path, images):
    train_tiny_autoencoder(images, tmp_path / "cache", tmp_path / "pipeline" / "vqvae", steps=1)
    assert FirstStage(str(tmp_path / "pipeline")).folder == tmp_path / "pipeline" / "vqvae"


def test_codebook_restarts_move_only_dead_codes_onto_encoder_outputs():
    from sparsedm.autoencoder.codebook import CodebookRestarts

    model = VQModel(block_out_channels=(8,), norm_num_groups=4, num_vq_embeddings=16, latent_channels=2)
    restarts = CodebookRestarts(model, every=2, generator=torch.Generator().manual_seed(0))
    h = torch.randn(4, 2, 3, 3)
    restarts.initialize(h)
    latents = h.permute(0, 2, 3, 1).reshape(-1, 2)
    codebook = model.quantize.embedding.weight
    assert all((latents == code).all(1).any() for code in codebook)  # every code starts on an encoder output

    with torch.no_grad():
        codebook[:] = torch.arange(16.0)[:, None].repeat(1, 2)  # codes (j, j): a batch near (0, 0) uses code 0
    near_zero = 0.01 * torch.randn(2, 2, 3, 3)
    restarts.observe(near_zero)
    assert restarts.after_step(1) is None  # not a restart step
    restarts.observe(near_zero)
    assert restarts.after_step(2) == {"codes_used": 1, "codes_restarted": 15}
    assert codebook[0].tolist() == [0.0, 0.0]
    moved = near_zero.permute(0, 2, 3, 1).reshape(-1, 2)
    assert all((moved == code).all(1).any() for code in codebook[1:])


def test_the_quality_benchmark_measures_the_held_out_split(tmp_path, finished_autoencoder, monkeypatch):
    """benchmarks/autoencoder_quality.py: the PSNR the run recorded at its end, an rFID, and the picture."""
    use_pooled_pixels(monkeypatch)
    spec = importlib.util.spec_from_file_location("autoencoder_quality", "benchmarks/autoencoder_quality.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = benchmark.main([str(finished_autoencoder), "--picture", str(tmp_path / "pairs.png"), "--count", "4"])
    recorded = json.loads((finished_autoencoder / "metrics.json").read_text())
    assert result["held_out_images"] == 7  # a tenth of the 72 shapes
    assert result["psnr_of_mean_mse_db"] == pytest.approx(recorded["val_psnr_after"], abs=1e-4)
    assert result["mean_psnr_db"] >= result["psnr_of_mean_mse_db"] - 1e-9  # Jensen: the mean of logs is larger
    assert result["rfid"] > 0
    with Image.open(tmp_path / "pairs.png") as picture:
        assert picture.size[0] > picture.size[1] > 0  # 4 originals over their 4 reconstructions
