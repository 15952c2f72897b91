"""`sparsedm export RUN --out DIR`: a Latent Diffusion run as a diffusers `LDMPipeline` folder, a DiT run as a
`DiTPipeline` folder (inference/pipelines.py; a DiT's folders are transformer/ and vae/ where a UNet's are
unet/ and vqvae/, and `DiTPipeline.from_pretrained(DIR)(class_labels=[0] * 4, guidance_scale=1.0)` samples it).

    DIR/model_index.json        LDMPipeline: vqvae + unet + scheduler
    DIR/unet/                   UNet2DModel: the run's EMA weights, masked entries exactly zero
    DIR/vqvae/                  the run's autoencoder, its config's scaling_factor set to the run's s
    DIR/scheduler/              DDIMScheduler with the run's noise schedule
    DIR/masks.safetensors       {UNet parameter name: bool mask}; metadata: the sparse config, step, sparsity
    DIR/README.md               the model card: Hub metadata, the run's sparsity, costs and scores (model_card.py)
    DIR/unet_sparse.safetensors with --compress: the UNet's weights, each sparse tensor as its non-zeros and a
                                bit-packed mask (sparsedm/sparse/compress.py); 0.16x of unet/ at S = 0.9

It loads with diffusers alone: `LDMPipeline.from_pretrained(DIR)(batch_size=4).images`. To continue sparse
training from it, load `unet/` with `UNet2DModel.from_pretrained`, build a `SparseEngine` with the run's sparse
config, and give it the masks: `engine.load_masks(load_masks(DIR))`. The compressed file alone, with unet/'s
config, gives the same UNet bit for bit: `unet.load_state_dict(load_compressed(DIR / "unet_sparse.safetensors")[0])`.
docs/format.md specifies both safetensors files for readers without sparsedm.
"""

import json
import shutil
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sparsedm.config_loader import to_dict
from sparsedm.errors import UserError
from sparsedm.inference.model_card import write_model_card
from sparsedm.inference.pipelines import LAYOUTS, layout_of
from sparsedm.inference.sampling import load_run_ema
from sparsedm.runs.files import writing
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse.compress import (
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    check_format_version,
    dense_bytes,
    save_compressed,
)
from sparsedm.sparse.masks import apply_masks_
from sparsedm.sparse.sparsity_check import check_sparse

MASKS = "masks.safetensors"
COMPRESSED_UNET = LAYOUTS["ldm"].compressed


def export_run(
    run_path, out, checkpoint: Optional[str] = None, overwrite: bool = False, compress: bool = False
) -> dict:
    """Write the pipeline folder (and, with `compress`, the compressed UNet); returns what was written
    (non-zeros of the sparse tensors, scaling factor, compressed / dense bytes)."""
    run, out = RunDir(run_path), Path(out)
    cfg = run.read_config()
    layout = layout_of(cfg.task, run.path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; export writes a folder: choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --out")
    cfg, state, task, unet = load_run_ema(run, checkpoint)
    task.check_autoencoder()
    masks = state["engine"]["masks"]
    # the engine keeps the EMA sparse; if it is not, the export says so before making the zeros exact
    check_sparse(
        masks, unet, f"the EMA of {run.path}", f"the exported {layout.kind} has them zeroed; the run's EMA does not"
    )
    apply_masks_(dict(unet.named_parameters()), masks)
    vqvae = task.first_stage.load("cpu")
    vqvae.register_to_config(scaling_factor=task.scaling_factor)

    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
    nonzero = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    metadata = {
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        "sparse": json.dumps(to_dict(cfg.sparse)),
        "step": str(state["step"]),
        "sparsity": str(1 - nonzero / total if total else 0.0),
    }
    compressed = {}
    with writing():
        layout.build(unet, vqvae, task.diffusion.scheduler("ddim")).save_pretrained(out)
        save_file({name: mask.contiguous() for name, mask in masks.items()}, out / MASKS, metadata=metadata)
        if compress:
            weights = unet.state_dict()
            size = save_compressed(out / layout.compressed, weights, masks, metadata=metadata)
            compressed = {"compressed": str(out / layout.compressed), "compressed_ratio": size / dense_bytes(weights)}
        write_model_card(out, run, cfg, task, unet, masks, state["step"], compress, layout)
    return {
        **compressed,
        "out": str(out),
        "pipeline": layout.pipeline.__name__,
        "denoiser": layout.kind,
        "step": state["step"],
        "scaling_factor": task.scaling_factor,
        "masked_tensors": len(masks),
        "nonzero": nonzero,
        "total": total,
    }


def load_masks(folder) -> Dict[str, torch.Tensor]:
    """{parameter name: bool mask} of an exported denoiser (empty for a dense run)."""
    path = Path(folder) / MASKS
    if not path.is_file():
        raise UserError(f"{path} does not exist; export the run with `sparsedm export RUN --out {folder}`")
    try:
        with safe_open(path, framework="pt") as f:
            check_format_version(path, f.metadata() or {})
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({str(exc)[:80]}); export the run again with "
            f"`sparsedm export RUN --out {folder} --overwrite`"
        ) from None
