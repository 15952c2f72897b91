"""The built-in colour stand-in: the 4,495 colour emoji of OpenMoji 17.0.0 (CC BY-SA 4.0), rendered.

It exists so that the image pipeline can be trained and tested on a machine that has none of the paper's
data sets; it is not one of them, and is shown as "openmoji (stand-in, not a paper data set)".
The npm package is fetched once with `npm pack` into the cache folder, its `package/color/svg/*.svg`
files are rendered with cairosvg on white at the configured size, and the uint8 array is cached as .npz
beside it, one file per size.

Many emoji are drawn several times: five skin tones, a man, a woman and a person doing the same thing, couples
in every pair of skin tones. `variant_group` names each file's emoji with those variants taken out, so that the
train/validation split keeps every variant of an emoji on one side and a held-out image is never a recoloured
training image (4,494 rendered files, 2,361 groups).
"""

import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from sparsedm.data.images.config import CONFIG_KEY
from sparsedm.data.images.transforms import center_crop_resize
from sparsedm.errors import UserError

log = logging.getLogger(__name__)

PACKAGE = "openmoji@17.0.0"
TARBALL = "openmoji-17.0.0.tgz"
COLOR_SVG_DIR = "package/color/svg/"
# Code points that make a variant of the same emoji: the five skin tones (U+1F3FB-1F3FF), the female and male
# signs (U+2640, U+2642) and the emoji presentation selector (U+FE0F).
VARIANT_CODE_POINTS = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF", "2640", "2642", "FE0F"})
ZWJ = "200D"  # the zero-width joiner that glues code points into one emoji


class RenderedImages:
    """The rendered emoji held in memory; satisfies the `ImageSource` protocol of `dataset.py`."""

    def __init__(self, images: np.ndarray, names: np.ndarray):
        self.images = images  # (N, S, S, 3) uint8
        self.names = names  # (N,) SVG file names, e.g. "1F600.svg"

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"openmoji {self.names[index]}"

    def load(self, index: int, size: int) -> np.ndarray:
        if size == self.images.shape[1]:
            return self.images[index]
        return center_crop_resize(Image.fromarray(self.images[index]), size)

    def groups(self) -> list[str]:
        """Each image's `variant_group`: images of one group go to the same split."""
        return [variant_group(str(name)) for name in self.names]


def variant_group(file_name: str) -> str:
    """The emoji a file draws, less skin tone, gender and presentation: "1F9D1-1F3FB-200D-1F692.svg" (firefighter,
    light skin) and "1F468-200D-1F692.svg" (man firefighter) stay apart, "1F468-1F3FF-200D-1F692.svg" joins the
    latter."""
    stem = file_name.removesuffix(".svg")
    kept: list[str] = []
    for code_point in stem.split("-"):
        # a joiner left dangling or doubled by a removed variant goes too
        if code_point not in VARIANT_CODE_POINTS and not (code_point == ZWJ and (not kept or kept[-1] == ZWJ)):
            kept.append(code_point)
    if kept and kept[-1] == ZWJ:
        kept.pop()
    return "-".join(kept) or stem  # a lone skin-tone swatch or gender sign is its own emoji


def openmoji_images(image_size: int, cache_dir) -> RenderedImages:
    """The rendered stand-in at image_size, from the cache, or fetched and rendered now (20-30 s on 2 cores)."""
    folder = Path(cache_dir).expanduser() / TARBALL.removesuffix(".tgz")
    cached = folder / f"color-{image_size}px.npz"
    if not cached.is_file():
        svgs = read_color_svgs(fetch_package(folder))
        log.info("rendering %d openmoji SVGs at %d px into %s (once)", len(svgs), image_size, cached)
        images, names = render_svgs(svgs, image_size)
        _save_atomically(cached, images=images, names=names)
    with np.load(cached, allow_pickle=False) as arrays:
        return RenderedImages(arrays["images"], arrays["names"])


def fetch_package(folder: Path) -> Path:
    """The npm tarball in `folder`, fetched with `npm pack` if it is not there yet."""
    tarball = folder / TARBALL
    if tarball.is_file():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"the openmoji stand-in is fetched with npm, which is not installed; install Node.js/npm "
            f"(e.g. apt-get install npm), put {TARBALL} in {folder}, or set {CONFIG_KEY}.name to a real data set"
        )
    folder.mkdir(parents=True, exist_ok=True)
    # Packed into a fresh folder and moved into place, so an interrupted download never looks complete.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        result = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=scratch, capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"`npm pack {PACKAGE}` failed ({reason}); check npm's registry access and retry")
        os.replace(Path(scratch) / TARBALL, tarball)
    return tarball


def read_color_svgs(tarball: Path) -> list[tuple[str, bytes]]:
    """(file name, SVG bytes) of every colour SVG in the package, sorted by name."""
    try:
        with tarfile.open(tarball) as archive:
            svgs = [
                (Path(member.name).name, archive.extractfile(member).read())
                for member in archive.getmembers()
                if member.isfile() and member.name.startswith(COLOR_SVG_DIR) and member.name.endswith(".svg")
            ]
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"{tarball} is not a readable npm tarball ({error}); delete it to fetch it again") from None
    if not svgs:
        raise UserError(f"{tarball} holds no {COLOR_SVG_DIR}*.svg; delete it to fetch {PACKAGE} again")
    return sorted(svgs)


def render_svgs(svgs: list[tuple[str, bytes]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render each SVG on white to size×size RGB; unrenderable ones are skipped, counted and logged."""
    import cairosvg  # imported here: only the stand-in needs it, and it needs the system libcairo2

    images, names = [], []
    for name, svg in svgs:
        try:
            png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size, background_color="white")
        # cairosvg fails with whatever its parser trips on (in 17.0.0 one flag's missing marker gives an
        # AttributeError); one bad emoji must not stop the other 4,494.
        except Exception as error:
            log.warning("skipping unrenderable openmoji SVG %s: %s", name, error)
            continue
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8))
        names.append(name)
    if len(names) < len(svgs):
        log.warning("skipped %d of %d openmoji SVGs that could not be rendered", len(svgs) - len(names), len(svgs))
    if not images:
        raise UserError("none of the openmoji SVGs could be rendered; delete the cache folder to fetch them again")
    return np.stack(images), np.array(names)


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    # Written under a temporary name and renamed, so a crash or a second process never leaves half a file.
    scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(scratch, "wb") as file:
        np.savez(file, **arrays)
    os.replace(scratch, path)
