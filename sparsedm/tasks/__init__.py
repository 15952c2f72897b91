"""Tasks: each pairs a denoiser, a data layer and the diffusion process (ChiroDiff; Latent Diffusion), or
trains Latent Diffusion's autoencoder. Which class a task name stands for is sparsedm.config's TASKS, the one
task registry (with each task's schema)."""

from sparsedm.tasks.base import Task


def build_task(cfg) -> Task:
    """The task of a typed experiment config (`sparsedm.config.load_config` or `read_run_config`): the class the
    registry names for its `task`, built by the config itself (this package sits below the schemas)."""
    return cfg.build_task()


__all__ = ["Task", "build_task"]
