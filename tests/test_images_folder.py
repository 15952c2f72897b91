"""Image folders: found recursively and in sorted order; corrupt files skipped and counted; bad paths refused."""

import logging

import numpy as np
import pytest
from PIL import Image

from sparsedm.data.images import ImageDataConfig, load_image_splits
from sparsedm.data.images.folder import find_images
from sparsedm.errors import UserError


def _write(path, colour, size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)


def test_finds_every_image_suffix_at_any_depth_in_sorted_order(tmp_path):
    for relative in ("b.png", "a.JPG", "sub/deeper/c.jpeg", "sub/d.webp", "sub/e.PNG"):
        _write(tmp_path / relative, (1, 2, 3))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "f.gif").write_bytes(b"GIF89a")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "sub/d.webp", "sub/deeper/c.jpeg", "sub/e.PNG"]


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds no"):
        find_images(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="holds no"):
        load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path)))


def test_a_corrupt_file_is_skipped_counted_and_logged(tmp_path, caplog):
    for i in range(9):
        _write(tmp_path / f"group{i % 3}" / f"{i}.png", (i * 20, 0, 0))
    (tmp_path / "group1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    with caplog.at_level(logging.WARNING, logger="sparsedm.data.images"):
        train, val = load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path), image_size=8))
    assert train.skipped + val.skipped == 1
    assert len(train) + len(val) == 9
    assert any("broken.jpg" in record.getMessage() for record in caplog.records)


def test_a_folder_of_only_corrupt_files_is_a_user_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="could be read"):
        load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path), image_size=8))


def test_a_flat_folder_loads_to_model_tensors(tmp_path):
    for i in range(10):
        _write(tmp_path / f"{i:02d}.jpg", (255, 255, 255) if i % 2 else (0, 0, 0), size=(30, 20), fmt="JPEG")
    train, val = load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path), image_size=16))
    assert (len(train), len(val)) == (9, 1)  # no paper sizes for a plain folder: a tenth is held out
    x = train[0]
    assert x.shape == (3, 16, 16) and x.dtype.is_floating_point
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert train.images.shape == (9, 16, 16, 3) and train.images.dtype == np.uint8
    assert train.name == "image folder train"


def test_decoding_shows_a_bar_only_when_asked(tmp_path, capsys):
    for i in range(4):
        _write(tmp_path / f"{i}.png", (i * 60, 0, 0))
    load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path), image_size=8), progress=False)
    assert "decode image folder" not in capsys.readouterr().err
    load_image_splits(ImageDataConfig(name="folder", path=str(tmp_path), image_size=8), progress=True)
    err = capsys.readouterr().err
    assert "decode image folder train" in err and "decode image folder val" in err
