"""Image data for the Latent Diffusion half: LSUN-Bedrooms, CelebA-HQ, Imagenette, any image folder, and
the built-in openmoji stand-in for machines that have none of the paper's data sets.

    cfg = ImageDataConfig(name="celebahq", path="/data/celeba_hq_256", image_size=256)
    train, val = load_image_splits(cfg)   # ImageDataset: float 3×H×W in [-1, 1]; .images is uint8 N×H×W×3
    log.info("data: %s", display_name(cfg))
"""

from sparsedm.data.images.config import DATASET_DISPLAY_NAMES, ImageDataConfig, check_config, display_name
from sparsedm.data.images.dataset import ImageDataset, load_image_splits
from sparsedm.data.images.transforms import center_crop_resize, to_model_tensor, to_uint8_images

__all__ = [
    "DATASET_DISPLAY_NAMES",
    "ImageDataConfig",
    "ImageDataset",
    "center_crop_resize",
    "check_config",
    "display_name",
    "load_image_splits",
    "to_model_tensor",
    "to_uint8_images",
]
