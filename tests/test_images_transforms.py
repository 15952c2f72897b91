"""Centre crop + resize keeps the centre and the configured size; tensors map uint8 to [-1, 1] exactly."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sparsedm.data.images.transforms import (
    UnreadableImage,
    center_crop_resize,
    decode_image,
    to_model_tensor,
    to_uint8_images,
)

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _centre_red_sides_blue(width: int, height: int) -> Image.Image:
    """Blue everywhere except the largest centred square, which is red."""
    pixels = np.full((height, width, 3), BLUE, dtype=np.uint8)
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top : top + side, left : left + side] = RED
    return Image.fromarray(pixels)


@pytest.mark.parametrize("width, height", [(90, 60), (60, 90), (64, 64)])
@pytest.mark.parametrize("size", [16, 32])
def test_crop_keeps_the_centre_square_and_drops_the_sides(width, height, size):
    out = center_crop_resize(_centre_red_sides_blue(width, height), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    # Had any blue side band survived the crop, some pixel would be bluish.
    assert np.abs(out.astype(int) - RED).max() <= 2


def test_crop_is_centred_not_taken_from_a_corner():
    # A 40x20 image whose left quarter is black, middle half white, right quarter black: the centre
    # 20x20 square is exactly the white part.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 10:30] = 255
    out = center_crop_resize(Image.fromarray(pixels), 20)
    assert (out == 255).all()


def test_small_images_are_upscaled_and_odd_modes_become_rgb():
    gray = Image.new("L", (10, 10), 128)
    rgba = Image.new("RGBA", (12, 8), (1, 2, 3, 0))
    assert center_crop_resize(gray, 32).shape == (32, 32, 3)
    assert (center_crop_resize(gray, 32) == 128).all()
    assert (center_crop_resize(rgba, 8) == (1, 2, 3)).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_reads_each_published_format(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 36), (0, 200, 0)).save(buffer, fmt, quality=95)
    out = decode_image(buffer.getvalue(), 24)
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(int) - (0, 200, 0)).max() <= 4


def test_decode_rejects_garbage_and_truncated_files():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "JPEG")
    with pytest.raises(UnreadableImage):
        decode_image(b"not an image at all", 16)
    with pytest.raises(UnreadableImage):
        decode_image(buffer.getvalue()[:200], 16)


def test_model_tensor_layout_and_range():
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    images[0, 1, 2] = (255, 0, 128)
    x = to_model_tensor(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x[0, :, 1, 2].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1.0], abs=1e-6)
    assert x[1].eq(-1.0).all()


def test_uint8_round_trip_is_exact_and_out_of_range_is_clipped():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8_images(to_model_tensor(images)), images)
    assert to_uint8_images(torch.tensor([[[[3.0]], [[-3.0]], [[0.0]]]])).tolist() == [[[[255, 0, 128]]]]
