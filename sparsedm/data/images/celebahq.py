"""CelebA-HQ (Karras et al., 2018): 30,000 aligned face photos, read from a folder of image files.

It circulates as folders of JPEG/PNG files at 1024, 512 or 256 pixels (e.g. `CelebAMask-HQ/CelebA-HQ-img/`
or `celeba_hq_256/`); any of them works, the images are centre-cropped and resized to the configured size.
The paper trains on 12,500 images and validates on 500 of them.
"""

from sparsedm.data.images.folder import ImageFiles, find_images

PAPER_SPLIT_SIZES = (12_500, 500)  # (train, val) images in the paper


def celebahq_images(root) -> ImageFiles:
    return ImageFiles(find_images(root, "CelebA-HQ folder"))
