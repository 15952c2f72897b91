"""How good an autoencoder is: deterministic reconstructions, their error on a split, and a picture of them."""

import math
from pathlib import Path

import numpy as np
import torch

from sparsedm.autoencoder.model import decode, encode
from sparsedm.data.images import ImageDataset, to_uint8_images
from sparsedm.data.images.grid import save_image_grid

EVAL_BATCH = 64  # images per forward pass when measuring reconstruction error


def image_batch(images: ImageDataset, indices, device) -> torch.Tensor:
    return torch.stack([images[i] for i in indices]).to(device)


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
        x = image_batch(images, range(start, min(start + EVAL_BATCH, len(images))), device)
        error = (reconstruct(model, x).clamp(-1, 1) - x).double()
        l1 += float(error.abs().sum())
        mse += float(error.pow(2).sum())
    values = len(images) * images[0].numel()
    mse_01 = mse / values / 4  # [-1, 1] -> [0, 1] halves the error, quarters its square
    return {"l1": l1 / values, "mse": mse / values, "psnr": 10 * math.log10(1 / max(mse_01, 1e-12))}


def save_reconstructions(model, images: ImageDataset, device, path: Path, count: int = 16) -> None:
    """Validation images (odd rows) over their reconstructions (even rows), 8 a row."""
    x = image_batch(images, range(min(count, len(images))), device)
    rows = []
    for start in range(0, len(x), 8):
        chunk = x[start : start + 8]
        rows += [to_uint8_images(chunk), to_uint8_images(reconstruct(model, chunk))]
    save_image_grid(np.concatenate(rows), path, columns=min(8, len(x)))
