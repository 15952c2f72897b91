"""A PNG grid of uint8 images (samples, reconstructions), white gaps between them."""

import math

import numpy as np
from PIL import Image

GAP = 2  # pixels between images


def save_image_grid(images: np.ndarray, path, columns: int | None = None) -> None:
    """Write uint8 N x H x W x 3 images row by row, `columns` per row (default: a square-ish grid)."""
    count, height, width, _ = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + GAP) + GAP, columns * (width + GAP) + GAP, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = GAP + row * (height + GAP), GAP + column * (width + GAP)
        canvas[top : top + height, left : left + width] = image
    Image.fromarray(canvas).save(path)
