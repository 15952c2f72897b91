"""Imagenette keeps its own train/ and val/ class folders as the split."""

import re

import numpy as np
import pytest
from PIL import Image

from sparsedm.data.images import ImageDataConfig, load_image_splits
from sparsedm.errors import UserError

CLASSES = ("n01440764", "n02102040", "n03000684")
TRAIN_RED, VAL_BLUE = (230, 30, 30), (30, 30, 230)


def _imagenette(root, per_class=(4, 2)):
    """imagenette2-320/{train,val}/<wnid>/*.JPEG with red train images and blue val images."""
    for split, count, colour in (("train", per_class[0], TRAIN_RED), ("val", per_class[1], VAL_BLUE)):
        for wnid in CLASSES:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (24, 16), colour).save(folder / f"{wnid}_{i}.JPEG", "JPEG")
    return root


def _all_close_to(images, colour):
    return np.abs(images.astype(int) - colour).max() <= 6


def test_train_and_val_come_from_their_own_folders(tmp_path):
    root = _imagenette(tmp_path / "imagenette2-320")
    train, val = load_image_splits(ImageDataConfig(name="imagenette", path=str(root), image_size=8))
    assert (len(train), len(val)) == (12, 6)
    assert _all_close_to(train.images, TRAIN_RED) and _all_close_to(val.images, VAL_BLUE)
    assert train.name == "Imagenette train" and train.images.shape[1:] == (8, 8, 3)


def test_sizes_and_max_items_take_seeded_subsets_of_each_split(tmp_path):
    root = _imagenette(tmp_path / "imagenette2-320")
    cfg = ImageDataConfig(name="imagenette", path=str(root), image_size=8, train_size=5, max_items=3)
    train, val = load_image_splits(cfg)
    assert (len(train), len(val)) == (3, 3)
    assert _all_close_to(val.images, VAL_BLUE)
    with pytest.raises(UserError, match="train_size=13 but train/ holds 12"):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(root), train_size=13))


def test_wrong_layouts_are_user_errors_that_name_the_expected_one(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(tmp_path / "missing")))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.JPEG", "JPEG")
    with pytest.raises(UserError, match=r"no train/ class folders; expected the layout imagenette2-320/\{train,val\}"):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(tmp_path / "flat")))
    root = _imagenette(tmp_path / "imagenette2-160")
    for image in (root / "val").rglob("*.JPEG"):
        image.unlink()
    with pytest.raises(UserError, match="Imagenette val folder .* holds no"):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(root)))


def test_an_unextracted_imagenette_tgz_is_an_archive_to_extract(tmp_path):
    archive = tmp_path / "imagenette2-320.tgz"
    archive.write_bytes(b"\x1f\x8b")
    extract = re.escape(f"(tar xzf {archive} -C {tmp_path})")
    with pytest.raises(
        UserError, match=rf"Imagenette folder {re.escape(str(archive))} is an archive: extract it first {extract}"
    ):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(archive)))
    with pytest.raises(UserError, match=r"imagenette2-320 does not exist, but imagenette2-320.tgz does"):
        load_image_splits(ImageDataConfig(name="imagenette", path=str(tmp_path / "imagenette2-320")))
    (tmp_path / "celeba_hq_256.zip").write_bytes(b"PK\x03\x04")  # any image folder, e.g. CelebA-HQ
    with pytest.raises(UserError, match=r"CelebA-HQ folder .*celeba_hq_256.zip is an archive: .*unzip"):
        load_image_splits(ImageDataConfig(name="celebahq", path=str(tmp_path / "celeba_hq_256.zip")))
