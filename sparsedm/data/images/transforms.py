"""Pixels in and out: encoded bytes to square uint8 images, and uint8 images to and from model tensors.

Images are stored as uint8 H×W×3 (what FID and image files want) and become float C×H×W in [-1, 1]
(what the autoencoder and UNet want) only when a batch is drawn.
"""

import io

import numpy as np
import torch
from PIL import Image


class UnreadableImage(Exception):
    """An image whose bytes cannot be read or decoded; loaders skip and count it."""


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Crop the largest centred square, resize it to size×size, and return uint8 H×W×3.

    Same recipe as Latent Diffusion's LSUN/CelebA-HQ loaders: a centred square crop then bicubic
    resizing (Pillow antialiases when shrinking), so no content is stretched.
    """
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.uint8)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to a size×size×3 uint8 array, or raise `UnreadableImage`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return center_crop_resize(image, size)
    # Pillow reports a corrupt or truncated file as any of these, depending on where decoding stops.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(str(error) or type(error).__name__) from error


def to_model_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3)
    return pixels.to(torch.float32) / 127.5 - 1.0


def to_uint8_images(tensor: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] → uint8 (..., H, W, 3); values outside [-1, 1] are clipped."""
    pixels = ((tensor.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()
