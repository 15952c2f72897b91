"""Train/val splits: disjoint, fixed by the seed, the paper's sizes by default, scaled or refused when short."""

import logging

import numpy as np
import pytest
from PIL import Image

from sparsedm.data.images import ImageDataConfig, load_image_splits
from sparsedm.data.images.dataset import split_groups, split_indices, split_sizes
from sparsedm.errors import UserError


def _numbered_folder(root, count):
    """count PNGs whose colour encodes their number, so a loaded image tells which file it came from."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (10, 14), (i % 256, i // 256, 77)).save(root / f"img{i:04d}.png")
    return root


def _numbers(dataset):
    pixels = dataset.images[:, 0, 0].astype(int)
    return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())


def test_split_indices_are_disjoint_and_fixed_by_the_seed():
    train, val = split_indices(100, 70, 20, seed=3)
    assert (len(train), len(val)) == (70, 20)
    assert not set(train) & set(val)
    again_train, again_val = split_indices(100, 70, 20, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(100, 70, 20, seed=4)[1])


def test_val_does_not_move_when_only_train_size_changes():
    assert np.array_equal(split_indices(100, 70, 20, seed=1)[1], split_indices(100, 10, 20, seed=1)[1])


def test_group_splits_keep_groups_whole_and_val_fixed_by_the_seed():
    groups = [f"g{i // 3}" for i in range(30)] + [f"single{i}" for i in range(20)]  # ten triples, twenty singles
    train, val = split_groups(groups, 35, 12, seed=2, name="test")
    assert len(val) == 12 and len(train) == 35 and not set(train) & set(val)
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert np.array_equal(val, split_groups(groups, 5, 12, seed=2, name="test")[1])  # train_size does not move val
    assert np.array_equal(train, split_groups(groups, 35, 12, seed=2, name="test")[0])
    assert {groups[i] for i in val} != {groups[i] for i in split_groups(groups, 35, 12, seed=3, name="test")[1]}


def test_group_splits_refuse_a_val_size_whole_groups_cannot_fill():
    with pytest.raises(UserError, match="whole groups of variants give only 8 of data.val_size=10"):
        split_groups([f"g{i // 4}" for i in range(12)], 2, 10, seed=0, name="test")


def test_paper_sizes_are_used_when_the_folder_is_big_enough():
    assert split_sizes(30_000, None, None, (12_500, 500), "CelebA-HQ") == (12_500, 500)
    assert split_sizes(30_000, 100, None, (12_500, 500), "CelebA-HQ") == (100, 500)


def test_paper_sizes_are_scaled_down_with_a_warning_when_the_folder_is_short(caplog):
    with caplog.at_level(logging.WARNING):
        train, val = split_sizes(1_000, None, None, (10_598, 2_500), "LSUN-Bedrooms")
    assert (train, val) == (809, 191)  # 2,500 / 13,098 of 1,000 is 190.9
    assert "fewer than the paper's 10598 train + 2500 val" in caplog.text


def test_sizes_that_do_not_fit_are_user_errors():
    with pytest.raises(UserError, match="too few for 12500 train \\+ 500 val"):
        split_sizes(1_000, 12_500, None, (12_500, 500), "CelebA-HQ")
    with pytest.raises(UserError, match="too few"):
        split_sizes(10, 5, 6, None, "image folder")
    with pytest.raises(UserError, match="at least 2"):
        split_sizes(1, None, None, None, "image folder")


def test_loaded_splits_partition_the_folder_and_repeat_for_a_seed(tmp_path):
    root = _numbered_folder(tmp_path / "faces", 40)
    cfg = ImageDataConfig(name="folder", path=str(root), image_size=8, val_size=6, split_seed=5)
    train, val = load_image_splits(cfg)
    assert len(val) == 6 and len(train) == 34
    assert not _numbers(train) & _numbers(val)
    assert _numbers(train) | _numbers(val) == set(range(40))
    train_again, val_again = load_image_splits(cfg)
    assert np.array_equal(train.images, train_again.images) and np.array_equal(val.images, val_again.images)
    cfg.split_seed = 6
    assert _numbers(load_image_splits(cfg)[1]) != _numbers(val)


def test_max_items_takes_a_random_subset_of_each_split(tmp_path):
    root = _numbered_folder(tmp_path / "faces", 60)
    full_train, full_val = load_image_splits(ImageDataConfig(name="folder", path=str(root), image_size=8))
    train, val = load_image_splits(ImageDataConfig(name="folder", path=str(root), image_size=8, max_items=4))
    assert (len(train), len(val)) == (4, 4)
    assert _numbers(train) <= _numbers(full_train) and _numbers(val) <= _numbers(full_val)
    # A random subset, not the first files in name order.
    assert _numbers(train) != set(sorted(_numbers(full_train))[:4])


def test_celebahq_folder_smaller_than_the_paper_keeps_its_ratio(tmp_path, caplog):
    root = _numbered_folder(tmp_path / "celeba_hq_256", 52)
    with caplog.at_level(logging.WARNING):
        train, val = load_image_splits(ImageDataConfig(name="celebahq", path=str(root), image_size=8))
    assert (len(train), len(val)) == (50, 2)  # 500 / 13,000 of 52
    assert train.name == "CelebA-HQ train" and "fewer than the paper's 12500 train + 500 val" in caplog.text
