"""Latent Diffusion's first stage as a task of the training loop: a VQ or KL autoencoder trained, dense, on
reconstruction (sparsedm.autoencoder.objective), so it gets the denoiser's checkpoints, --resume, torchrun
and Ctrl-C.

The run folder is also a diffusers model folder (`VQModel.from_pretrained(AE)` / `AutoencoderKL...`, the
`autoencoder.path` of an ldm config), its `scaling_factor` set as LDM uses it: 1.0 for vq (LDM-VQ trains on
unscaled latents), 1/std of the training latents for kl (LDM-KL's scale_by_std); metrics.json records that
std either way. Beside the run files (config.yaml, metrics.jsonl with L1/MSE/PSNR at each validation and the
codebook restarts, checkpoints/, summary.json) it holds:

    AE/config.json, AE/diffusion_pytorch_model.safetensors   the autoencoder (the EMA; by default its weights)
    AE/metrics.json         validation reconstruction error before and after training, the scaling factor, ...
    AE/reconstructions.png  validation images (odd rows) over their reconstructions (even rows)
"""

import json
from pathlib import Path

import torch

from sparsedm.autoencoder.codebook import CodebookRestarts
from sparsedm.autoencoder.latents import LatentDataset, encode_images, latent_std
from sparsedm.autoencoder.model import build_autoencoder, encode
from sparsedm.autoencoder.objective import ReconstructionObjective, posterior_noise
from sparsedm.autoencoder.reconstruction import EVAL_BATCH, image_batch, reconstruction_error, save_reconstructions
from sparsedm.data.images import display_name, load_image_splits
from sparsedm.errors import UserError
from sparsedm.runs.batches import BatchSchedule
from sparsedm.runs.distributed import DistInfo, resolve_device
from sparsedm.runs.run_dir import RunDir
from sparsedm.tasks.base import Task

METRICS = "metrics.json"
OUTPUTS = ("config.json", "diffusion_pytorch_model.safetensors", METRICS, "reconstructions.png")


class AutoencoderTask(Task):
    name = "autoencoder"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.factor = 2 ** (len(cfg.model.block_out_channels) - 1)  # f, the downsampling factor
        self.restarts: CodebookRestarts | None = None
        self.train_set = self.val_set = self.device = None  # set by load_data

    @property
    def latent_shape(self) -> list:
        latent = self.cfg.data.image_size // self.factor
        return [self.cfg.model.latent_channels, latent, latent]

    def load_data(self, progress=None, device=None):
        self.device = device or resolve_device(self.cfg.train.device, DistInfo())
        self.train_set, self.val_set = load_image_splits(self.cfg.data, progress)
        return self.train_set, self.val_set

    def build_model(self) -> ReconstructionObjective:
        """A fresh autoencoder on the data's device; a VQ codebook starts on encoder outputs of the first batch."""
        cfg, tc = self.cfg, self.cfg.train
        if self.train_set is None:  # `sample`, `evaluate`: only the training loop builds this model
            raise UserError(
                "an autoencoder run is neither sampled nor evaluated; its folder is the autoencoder.path of an ldm "
                "config (its quality: metrics.json, reconstructions.png)"
            )
        autoencoder = build_autoencoder(cfg.model, cfg.data.image_size).to(self.device)
        if cfg.model.kind == "vq" and tc.codebook_restart_every:
            generator = torch.Generator(self.device).manual_seed(cfg.seed)
            self.restarts = CodebookRestarts(autoencoder, tc.codebook_restart_every, generator)
            first = BatchSchedule(len(self.train_set), tc.batch_size, cfg.seed).indices(0)
            with torch.no_grad():
                self.restarts.initialize(encode(autoencoder, image_batch(self.train_set, first, self.device))[0])
        return ReconstructionObjective(autoencoder, tc.recon_loss, tc.codebook_weight, tc.kl_weight)

    def build_optimizer(self, model, device) -> torch.optim.Optimizer:
        """Adam with taming/LDM's betas, unfused as their loop."""
        tc = self.cfg.train
        return torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)

    def collate(self, items):
        return {"images": torch.stack(items)}

    def loss(self, model, batch, seeds):
        """Reconstruction loss + regulariser; a KL posterior's noise for sample i comes from seeds[i] only."""
        x = batch["images"]
        noise = posterior_noise((len(x), *self.latent_shape), seeds, x.device) if self.cfg.model.kind == "kl" else None
        recon, regulariser, h, codes = model(x, noise)
        if self.restarts is not None and model.training:  # validation does not count as code use
            self.restarts.observe(h, codes)
        return recon + regulariser

    def after_optimizer_step(self, model, step):
        restarted = self.restarts.after_step(step) if self.restarts is not None else None
        return {"step": step, "event": "codebook_restart", **restarted} if restarted else None

    def validation_metrics(self, model) -> dict:
        return {f"val_{k}": v for k, v in reconstruction_error(model.autoencoder, self.val_set, self.device).items()}

    def flops_inputs(self, batch):
        return (batch["images"],)

    def finish(self, model, folder: Path, summary: dict) -> None:
        """The diffusers folder with its scaling factor, reconstructions.png and metrics.json."""
        autoencoder = model.autoencoder
        latents = LatentDataset(*encode_images(autoencoder, self.train_set, self.device, EVAL_BATCH, progress=False))
        std = latent_std(latents)
        scaling_factor = 1.0 if self.cfg.model.kind == "vq" else 1.0 / std  # LDM-VQ: unscaled; LDM-KL: scale_by_std
        autoencoder.register_to_config(scaling_factor=scaling_factor)
        autoencoder.save_pretrained(folder)
        save_reconstructions(autoencoder, self.val_set, self.device, folder / "reconstructions.png")
        validations = [r for r in RunDir(folder).read_metrics() if "val_l1" in r]
        before, after = validations[0], validations[-1]
        metrics = {
            "kind": self.cfg.model.kind,
            "data": self.data_name(),
            "image_size": self.cfg.data.image_size,
            "latent_shape": self.latent_shape,
            "downsampling_factor": self.factor,
            "params": sum(p.numel() for p in autoencoder.parameters()),
            "steps": summary["steps"],
            "recon_loss": self.cfg.train.recon_loss,
            **{f"val_{k}_before": before[f"val_{k}"] for k in ("l1", "mse", "psnr")},
            **{f"val_{k}_after": after[f"val_{k}"] for k in ("l1", "mse", "psnr")},
            "scaling_factor": scaling_factor,
            "latent_std": std,
            "wall_time_s": summary["wall_time_s"],
        }
        (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")

    def data_name(self) -> str:
        return display_name(self.cfg.data)

    def state_dict(self) -> dict:
        return {"codebook_restarts": self.restarts.state_dict()} if self.restarts is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.restarts is not None:
            self.restarts.load_state_dict(state["codebook_restarts"])


def prepare_autoencoder_folder(out, resume: bool, overwrite: bool) -> None:
    """Never train over an autoencoder that is not this run's (e.g. a downloaded one); --overwrite removes it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if overwrite:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    elif (out / "config.json").exists() and not resume:
        raise UserError(
            f"{out} already holds an autoencoder; pass --resume to train it further, --overwrite to replace it, or choose another --out"
        )


def read_autoencoder_metrics(out) -> dict:
    return json.loads((Path(out) / METRICS).read_text())
