"""Which diffusers pipeline each image task exports as: its class, the folder names of its denoiser and
autoencoder, and the call that samples it unconditionally."""

from dataclasses import dataclass

from diffusers import DiTPipeline, LDMPipeline

from sparsedm.errors import UserError


@dataclass(frozen=True)
class PipelineLayout:
    pipeline: type  # the diffusers pipeline class, which model_index.json names
    denoiser: str  # its denoiser's argument and folder: unet | transformer
    autoencoder: str  # its autoencoder's argument and folder: vqvae | vae
    kind: str  # what the card calls the denoiser
    call: str  # the arguments of an unconditional call for 4 images, as the card prints them

    @property
    def compressed(self) -> str:
        """The file `export --compress` writes the denoiser's non-zeros to."""
        return f"{self.denoiser}_sparse.safetensors"

    def build(self, denoiser, autoencoder, scheduler):
        return self.pipeline(**{self.denoiser: denoiser, self.autoencoder: autoencoder, "scheduler": scheduler})


LAYOUTS = {
    "ldm": PipelineLayout(LDMPipeline, "unet", "vqvae", "UNet", "batch_size=4"),
    # one class, label 0; guidance 1 is no classifier-free guidance (the model has no null label trained)
    "dit": PipelineLayout(DiTPipeline, "transformer", "vae", "transformer", "class_labels=[0] * 4, guidance_scale=1.0"),
}


def layout_of(task: str, run) -> PipelineLayout:
    if task not in LAYOUTS:
        raise UserError(
            f"{run} is a task={task} run; export writes diffusers pipelines of Latent Diffusion runs "
            f"({' or '.join(f'task={name}' for name in LAYOUTS)})"
        )
    return LAYOUTS[task]
