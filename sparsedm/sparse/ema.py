"""An exponential moving average of the weights, kept sparse with the model.

Diffusion models sample from the EMA, so it must have the run's sparsity: the engine zeroes its entries at
dropped positions and sets grown positions to the new weight (zero) at each mask update. Between updates the
lerp keeps masked entries at exactly zero, since both the EMA and the weight are zero there.
"""

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        """decay: the EMA's β; warmup: use min(β, (1 + n) / (10 + n)) after n updates, as LDM's LitEma does."""
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def named_parameters(self):
        return self.module.named_parameters()

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = state["num_updates"]
        self.decay = state["decay"]
        self.warmup = state["warmup"]
