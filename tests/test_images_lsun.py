"""LSUN-Bedrooms from its LMDB release (WebP/JPEG values) and from an exported folder."""

import io
import logging
import re
import sys

import lmdb
import numpy as np
import pytest
from PIL import Image

from sparsedm.data.images import ImageDataConfig, load_image_splits
from sparsedm.data.images.lsun import LmdbImages, lsun_images
from sparsedm.errors import UserError


def _encoded(colour, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 14), colour).save(buffer, fmt, quality=95)
    return buffer.getvalue()


def _write_lmdb(root, values: dict[bytes, bytes]):
    """An LMDB folder like bedroom_train_lmdb/: data.mdb + lock.mdb, keys are image ids."""
    env = lmdb.open(str(root), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()
    return root


def test_lmdb_values_decode_in_key_order(tmp_path):
    root = _write_lmdb(
        tmp_path / "bedroom_train_lmdb",
        {b"0003": _encoded((0, 0, 250), "JPEG"), b"0001": _encoded((250, 0, 0), "WEBP")},
    )
    source = lsun_images(root)
    assert isinstance(source, LmdbImages) and source.keys == [b"0001", b"0003"]
    assert np.abs(source.load(0, 8).astype(int) - (250, 0, 0)).max() <= 6
    assert np.abs(source.load(1, 8).astype(int) - (0, 0, 250)).max() <= 6
    assert source.describe(1).endswith("bedroom_train_lmdb[0003]")
    del source  # py-lmdb opens one database once per process; dropping the reader closes it
    assert isinstance(lsun_images(root / "data.mdb"), LmdbImages)


def test_lmdb_release_loads_with_a_corrupt_value_skipped_and_counted(tmp_path, caplog):
    values = {f"{i:04d}".encode(): _encoded((i * 10, 100, 100), "WEBP") for i in range(12)}
    values[b"0005"] = b"RIFF\x00\x00\x00\x00WEBP broken"
    root = _write_lmdb(tmp_path / "bedroom_train_lmdb", values)
    with caplog.at_level(logging.WARNING):
        train, val = load_image_splits(ImageDataConfig(name="lsun_bedrooms", path=str(root), image_size=8))
    assert len(train) + len(val) == 11 and train.skipped + val.skipped == 1
    assert "bedroom_train_lmdb[0005]" in caplog.text
    assert train.name == "LSUN-Bedrooms train"


def test_exported_folder_is_read_like_any_image_folder(tmp_path):
    root = tmp_path / "bedroom_export"
    (root / "0" / "1").mkdir(parents=True)
    for i in range(5):
        (root / "0" / "1" / f"{i}.webp").write_bytes(_encoded((i * 40, 0, 0), "WEBP"))
    train, val = load_image_splits(ImageDataConfig(name="lsun_bedrooms", path=str(root), image_size=8))
    assert (len(train), len(val)) == (4, 1)


def test_empty_lmdb_and_missing_lmdb_package_are_user_errors(tmp_path, monkeypatch):
    empty = _write_lmdb(tmp_path / "empty_lmdb", {})
    with pytest.raises(UserError, match="is empty"):
        lsun_images(empty)
    root = _write_lmdb(tmp_path / "bedroom_train_lmdb", {b"1": _encoded((0, 0, 0), "WEBP")})
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` raise ImportError
    with pytest.raises(UserError, match="pip install lmdb==3.0.0, or export it to a folder"):
        lsun_images(root)


def test_the_parent_of_lmdb_folders_is_refused_with_the_path_it_likely_meant(tmp_path):
    _write_lmdb(tmp_path / "bedroom_train_lmdb", {b"1": _encoded((0, 0, 0), "WEBP")})
    _write_lmdb(tmp_path / "bedroom_val_lmdb", {b"1": _encoded((0, 0, 0), "WEBP")})
    meant = tmp_path / "bedroom_train_lmdb"
    with pytest.raises(
        UserError,
        match=r"holds no images but the LMDB folder\(s\) bedroom_train_lmdb, bedroom_val_lmdb; "
        rf"did you mean data\.path={re.escape(str(meant))}\?",
    ):
        lsun_images(tmp_path)


def test_an_lmdb_holding_only_a_named_sub_database_is_refused_saying_so(tmp_path):
    root = tmp_path / "bedroom_train_lmdb"
    root.mkdir()
    env = lmdb.open(str(root), map_size=1 << 22, max_dbs=1)
    with env.begin(write=True, db=env.open_db(b"images")) as txn:
        txn.put(b"0001", _encoded((0, 0, 0), "WEBP"))
    env.close()
    with pytest.raises(UserError, match=r"holds the named sub-database\(s\) 'images', not images in its main database"):
        lsun_images(root)


def test_an_unextracted_lsun_zip_is_an_archive_to_extract(tmp_path):
    archive = tmp_path / "bedroom_train_lmdb.zip"
    archive.write_bytes(b"PK\x03\x04")
    extract = re.escape(f"(unzip {archive} -d {tmp_path})")
    with pytest.raises(UserError, match=rf"{re.escape(str(archive))} is an archive: extract it first {extract}"):
        load_image_splits(ImageDataConfig(name="lsun_bedrooms", path=str(archive)))
    with pytest.raises(
        UserError, match=rf"bedroom_train_lmdb does not exist, but bedroom_train_lmdb.zip does: .*{extract}"
    ):
        lsun_images(tmp_path / "bedroom_train_lmdb")
