"""`sparsedm train-autoencoder`: the first stage of Latent Diffusion, trained on reconstruction alone.

Loss: L1 (or MSE) between image and reconstruction, plus the VQ loss (codebook + commitment, through
diffusers' VectorQuantizer with its straight-through gradient, its dead codes restarted: codebook.py) for
`vq`, or the weighted KL term for `kl`.
LDM also uses LPIPS and a patch GAN; without them reconstructions are blurrier, which is why the paper-scale
configs suggest a pretrained LDM autoencoder where one can be downloaded.

The folder written is a diffusers model folder (`VQModel.from_pretrained(AE)` / `AutoencoderKL...`) with
its `scaling_factor` set as LDM uses it: 1.0 for vq (LDM-VQ trains on unscaled latents), 1/std of the training
latents for kl (LDM-KL's scale_by_std); metrics.json records that std either way. Plus:

    AE/metrics.json        validation reconstruction error before and after training, the scaling factor, ...
    AE/metrics.jsonl       the training loss every `train.log_every` steps; codebook restarts (vq)
    AE/train_config.yaml   the resolved config
    AE/reconstructions.png validation images (odd rows) over their reconstructions (even rows)
"""

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from sparsedm.autoencoder.codebook import CodebookRestarts
from sparsedm.autoencoder.config import AutoencoderExperiment
from sparsedm.autoencoder.latents import LatentDataset, encode_images, latent_std
from sparsedm.autoencoder.model import build_autoencoder, decode, encode
from sparsedm.data.images import ImageDataset, display_name, load_image_splits, to_uint8_images
from sparsedm.data.images.grid import save_image_grid
from sparsedm.errors import UserError
from sparsedm.runs.batches import BatchSchedule
from sparsedm.runs.distributed import DistInfo, resolve_device

log = logging.getLogger(__name__)

METRICS = "metrics.json"
WRITTEN = (
    "config.json",
    "diffusion_pytorch_model.safetensors",
    METRICS,
    "metrics.jsonl",
    "train_config.yaml",
    "reconstructions.png",
)
EVAL_BATCH = 64  # images per forward pass when measuring reconstruction error


def _batch(images: ImageDataset, indices, device) -> torch.Tensor:
    return torch.stack([images[i] for i in indices]).to(device)


def _losses(
    model,
    x: torch.Tensor,
    mean: torch.Tensor,
    std,
    cfg: AutoencoderExperiment,
    generator: torch.Generator,
    restarts=None,
):
    """(reconstruction loss, regulariser) of a batch encoded as (mean, std): the VQ loss for vq, the KL for kl.
    A VQ step tells `restarts` which codes the quantiser chose (one nearest-code search per step)."""
    if std is None:
        quant, regulariser, (_, _, codes) = model.quantize(mean)  # regulariser: the VQ (commitment) loss
        if restarts is not None:
            restarts.observe(mean, codes)
        reconstruction = model.decode(quant, force_not_quantize=True).sample
    else:
        z = mean + std * torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
        reconstruction = decode(model, z)
        # per pixel value, like the mean L1: LDM's kl_weight 1e-6 weighs it against a per-image *sum* of L1
        regulariser = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * std.log()).flatten(1).sum(1).mean() / x[0].numel()
    error = reconstruction - x
    recon = error.abs().mean() if cfg.train.recon_loss == "l1" else error.pow(2).mean()
    weight = cfg.train.codebook_weight if std is None else cfg.train.kl_weight
    return recon, weight * regulariser


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction: a VQ model quantises, a KL model decodes its posterior mean."""
    return decode(model, encode(model, x)[0])


@torch.no_grad()
def reconstruction_error(model, images: ImageDataset, device) -> dict:
    """Mean L1 and MSE per pixel value on [-1, 1] images, and PSNR in dB on [0, 1] (from the mean MSE)."""
    model.eval()
    l1 = mse = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        x = _batch(images, range(start, min(start + EVAL_BATCH, len(images))), device)
        error = (reconstruct(model, x).clamp(-1, 1) - x).double()
        l1 += float(error.abs().sum())
        mse += float(error.pow(2).sum())
    values = len(images) * images[0].numel()
    mse_01 = mse / values / 4  # [-1, 1] -> [0, 1] halves the error, quarters its square
    return {"l1": l1 / values, "mse": mse / values, "psnr": 10 * math.log10(1 / max(mse_01, 1e-12))}


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    if (out / "config.json").exists() and not overwrite:
        raise UserError(f"{out} already holds an autoencoder; pass --overwrite to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if overwrite:
        for name in WRITTEN:
            (out / name).unlink(missing_ok=True)


def train_autoencoder(cfg: AutoencoderExperiment, out, overwrite: bool = False, progress: bool = True) -> dict:
    """Train the autoencoder `cfg` describes, write it to `out`, and return its metrics.json."""
    out = Path(out)
    prepare_out_dir(out, overwrite)
    tc = cfg.train
    device = resolve_device(tc.device, DistInfo())
    torch.manual_seed(cfg.seed)
    train_set, val_set = load_image_splits(cfg.data, progress)
    model = build_autoencoder(cfg.model, cfg.data.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.betas))
    batches = BatchSchedule(len(train_set), tc.batch_size, cfg.seed)
    total_steps = tc.epochs * batches.batches_per_epoch if tc.epochs else tc.steps
    generator = torch.Generator(device).manual_seed(cfg.seed)
    restarts = None
    if cfg.model.kind == "vq" and tc.codebook_restart_every:
        restarts = CodebookRestarts(model, tc.codebook_restart_every, generator)
        with torch.no_grad():
            restarts.initialize(encode(model, _batch(train_set, batches.indices(0), device))[0])

    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "train_config.yaml")
    before = reconstruction_error(model, val_set, device)
    log.info("validation reconstruction before training: L1 %.4f, PSNR %.2f dB", before["l1"], before["psnr"])
    start = time.time()
    model.train()
    window = {"recon": 0.0, "reg": 0.0, "n": 0}
    with (
        open(out / "metrics.jsonl", "w", buffering=1) as log_file,
        tqdm(
            total=total_steps, desc=f"train {cfg.model.kind} autoencoder", disable=not progress, dynamic_ncols=True
        ) as bar,
    ):
        for step in range(1, total_steps + 1):
            x = _batch(train_set, batches.indices(step - 1), device)
            mean, std = encode(model, x)
            recon, regulariser = _losses(model, x, mean, std, cfg, generator, restarts)
            loss = recon + regulariser
            if not torch.isfinite(loss):
                raise UserError(f"non-finite autoencoder loss at step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            restarted = restarts.after_step(step) if restarts is not None else None
            if restarted:
                log_file.write(json.dumps({"step": step, "event": "codebook_restart", **restarted}) + "\n")
            window["recon"] += float(recon.detach())
            window["reg"] += float(regulariser.detach())
            window["n"] += 1
            if step % tc.log_every == 0 or step == total_steps:
                record = {
                    "step": step,
                    "recon_loss": window["recon"] / window["n"],
                    "reg_loss": window["reg"] / window["n"],
                }
                log_file.write(json.dumps(record) + "\n")
                bar.set_postfix(recon=f"{record['recon_loss']:.4f}")
                window = {"recon": 0.0, "reg": 0.0, "n": 0}
            bar.update(1)
    wall = time.time() - start

    after = reconstruction_error(model, val_set, device)
    log.info("validation reconstruction after training: L1 %.4f, PSNR %.2f dB", after["l1"], after["psnr"])
    std = latent_std(LatentDataset(*encode_images(model, train_set, device, EVAL_BATCH, progress=False)))
    scaling_factor = 1.0 if cfg.model.kind == "vq" else 1.0 / std  # LDM-VQ: unscaled; LDM-KL: scale_by_std
    model.register_to_config(scaling_factor=scaling_factor)
    model.save_pretrained(out)
    _save_reconstructions(model, val_set, device, out / "reconstructions.png")

    factor = 2 ** (len(cfg.model.block_out_channels) - 1)
    latent = cfg.data.image_size // factor
    metrics = {
        "kind": cfg.model.kind,
        "data": display_name(cfg.data),
        "image_size": cfg.data.image_size,
        "latent_shape": [cfg.model.latent_channels, latent, latent],
        "downsampling_factor": factor,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": total_steps,
        "recon_loss": tc.recon_loss,
        **{f"val_{k}_before": v for k, v in before.items()},
        **{f"val_{k}_after": v for k, v in after.items()},
        "scaling_factor": scaling_factor,
        "latent_std": std,
        "wall_time_s": wall,
    }
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _save_reconstructions(model, images: ImageDataset, device, path: Path, count: int = 16) -> None:
    x = _batch(images, range(min(count, len(images))), device)
    rows = []
    for start in range(0, len(x), 8):
        chunk = x[start : start + 8]
        rows += [to_uint8_images(chunk), to_uint8_images(reconstruct(model, chunk))]
    save_image_grid(np.concatenate(rows), path, columns=min(8, len(x)))
