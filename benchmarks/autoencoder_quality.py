"""Held-out reconstruction quality of a trained autoencoder: PSNR, and rFID (FID of the reconstructions against
the originals), on the validation split of the data the autoencoder run was trained with.

    python benchmarks/autoencoder_quality.py AE [--picture docs/autoencoder_openmoji.png] [--count 16] [--no-fid]

AE is a `sparsedm train-autoencoder` run folder (its config.yaml names the data and the split). Printed: the
number of held-out images, PSNR in dB from the mean squared error (as metrics.json) and as the mean of the
per-image PSNRs, and the rFID (Inception on CPU: about 12 images/s on 2 cores, both sets of the split counted).
The picture shows held-out images spread over the split (odd rows) over their reconstructions (even rows).
Decoded samples carry the reconstructions' blur, so an FID of samples decoded by this autoencoder is expected
above about its rFID.
"""

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparsedm.autoencoder import FirstStage  # noqa: E402
from sparsedm.autoencoder.reconstruction import EVAL_BATCH, image_batch, reconstruct, save_reconstructions  # noqa: E402
from sparsedm.config import load_autoencoder_config  # noqa: E402
from sparsedm.data.images import ImageDataset, load_image_splits, to_uint8_images  # noqa: E402
from sparsedm.eval.fid import array_batches, compute_statistics, fid_from_statistics  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autoencoder", help="a finished `sparsedm train-autoencoder` run folder")
    parser.add_argument("--picture", help="PNG of held-out images over their reconstructions")
    parser.add_argument("--count", type=int, default=16, help="images in the picture [16]")
    parser.add_argument("--no-fid", action="store_true", help="PSNR only (no Inception)")
    args = parser.parse_args(argv)
    folder = Path(args.autoencoder)
    cfg = load_autoencoder_config(str(folder / "config.yaml"))
    _, held_out = load_image_splits(cfg.data, progress=False)
    model = FirstStage(str(folder)).load("cpu")
    originals, reconstructions, mses = [], [], []
    for start in range(0, len(held_out), EVAL_BATCH):
        x = image_batch(held_out, range(start, min(start + EVAL_BATCH, len(held_out))), "cpu")
        y = reconstruct(model, x).clamp(-1, 1)
        mse_01 = ((y - x).double() / 2).pow(2).flatten(1).mean(1)  # per image, on [0, 1]
        mses.append(mse_01)
        originals.append(to_uint8_images(x))
        reconstructions.append(to_uint8_images(y))
    result = {
        "held_out_images": len(held_out),
        "psnr_of_mean_mse_db": 10 * math.log10(1 / float(torch.cat(mses).mean())),
        "mean_psnr_db": float((10 * torch.log10(1 / torch.cat(mses).clamp_min(1e-12))).mean()),
    }
    if not args.no_fid:
        a, b = (
            compute_statistics(array_batches(np.concatenate(images)), progress=False)
            for images in (originals, reconstructions)
        )
        result["rfid"] = fid_from_statistics(a, b)
    if args.picture:
        spread = np.linspace(0, len(held_out) - 1, min(args.count, len(held_out))).round().astype(int)
        shown = ImageDataset(held_out.images[spread], held_out.name)  # across the split, not its first files (flags)
        save_reconstructions(model, shown, "cpu", Path(args.picture), count=len(shown))
        result["picture"] = args.picture
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
