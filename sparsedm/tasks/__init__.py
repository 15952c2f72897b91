"""Tasks: each pairs a denoiser, a data layer and the diffusion process (ChiroDiff; Latent Diffusion), or
trains Latent Diffusion's autoencoder."""

from sparsedm.errors import UserError
from sparsedm.tasks.base import Task


def build_task(cfg) -> Task:
    """The task of a typed experiment config (`sparsedm.config.load_config` or `read_run_config`)."""
    if cfg.task == "chirodiff":
        from sparsedm.tasks.chirodiff import ChiroDiffTask

        return ChiroDiffTask(cfg)
    if cfg.task == "ldm":
        from sparsedm.tasks.ldm import LatentDiffusionTask

        return LatentDiffusionTask(cfg)
    if cfg.task == "autoencoder":
        from sparsedm.tasks.autoencoder import AutoencoderTask

        return AutoencoderTask(cfg)
    raise UserError(f"task={cfg.task!r} is unknown; use chirodiff, ldm or autoencoder")


__all__ = ["Task", "build_task"]
