"""Keeping a VQ codebook alive: data-dependent initialisation and dead-code restarts.

diffusers' VectorQuantizer starts its codes in a tiny box around 0, and a code that is never the nearest gets
no gradient and stays dead. As in Jukebox (Dhariwal et al. 2020), codes start on random encoder outputs, and
every `every` steps the codes no batch selected since the last restart move onto random encoder outputs of
the current batch (configs/autoencoder_openmoji_cpu.yaml: about 7,950 of 8,192 codes in use per 100 steps).
Not part of LDM, which trains for far longer with LPIPS and a GAN.

With torchrun every rank keeps the same generator; at a restart the ranks pool which codes they used and
rank 0's new codebook is sent to all, so the ranks' models stay identical.
"""

import torch
import torch.distributed as dist
from diffusers import VQModel


class CodebookRestarts:
    def __init__(self, model: VQModel, every: int, generator: torch.Generator):
        self.codebook = model.quantize.embedding.weight  # e_j, Z x d
        self.every = every
        self.generator = generator
        self.used = torch.zeros(len(self.codebook), dtype=torch.bool, device=self.codebook.device)
        self.latents = None  # the latest batch's encoder outputs, N x d

    @torch.no_grad()
    def observe(self, h: torch.Tensor, codes: torch.Tensor | None = None) -> None:
        """Record which codes the encoder outputs h (B x d x H x W) select; `codes`: their indices when the
        quantiser has found them already (a training step), else they are searched here."""
        self.latents = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        if codes is None:
            codes = torch.cdist(self.latents, self.codebook).argmin(dim=1)
        self.used[codes.reshape(-1)] = True

    @torch.no_grad()
    def restart(self, codes: torch.Tensor) -> int:
        """Move the codes flagged in `codes` onto random latents of the last observed batch."""
        count = int(codes.sum())
        if count:
            picks = torch.randint(
                0, len(self.latents), (count,), generator=self.generator, device=self.generator.device
            )
            self.codebook[codes] = self.latents[picks.to(self.latents.device)]
        return count

    def initialize(self, h: torch.Tensor) -> None:
        self.observe(h)
        self.restart(torch.ones_like(self.used))
        self.used.zero_()

    def after_step(self, step: int) -> dict | None:
        """On every `every`-th step: restart the dead codes; returns {codes_used, codes_restarted}."""
        if not self.every or step % self.every:
            return None
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            pooled = self.used.to(torch.uint8)
            dist.all_reduce(pooled, op=dist.ReduceOp.MAX)
            self.used = pooled.bool()
        used = int(self.used.sum())
        restarted = self.restart(~self.used)
        if distributed:
            dist.broadcast(self.codebook.data, src=0)
        self.used.zero_()
        return {"codes_used": used, "codes_restarted": restarted}

    def state_dict(self) -> dict:
        """What a resumed run needs beyond the weights: the codes used since the last restart, the generator."""
        return {"used": self.used.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.used = state["used"].to(self.used.device)
        self.generator.set_state(state["generator"])
