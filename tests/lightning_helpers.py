"""A tiny LightningModule for the SparseTraining tests: an MLP regressor with a sparsedm EMA, one shaped like
CompVis' LitEma (each weight a buffer named without dots), like torch_ema's (ChiroDiff) or diffusers' EMAModel, on
64 fixed samples."""

import pytorch_lightning as pl
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from sparsedm.sparse import EMA


class LitEmaLike(nn.Module):
    """The layout of CompVis' LitEma: buffers named without dots, mapped by m_name2s_name; updated by forward."""

    def __init__(self, model: nn.Module, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.m_name2s_name = {name: name.replace(".", "") for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            self.register_buffer(self.m_name2s_name[name], p.detach().clone())

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        buffers = dict(self.named_buffers())
        for name, p in model.named_parameters():
            buffers[self.m_name2s_name[name]].lerp_(p, 1 - self.decay)


class ShadowEma:
    """The layout of torch_ema's ExponentialMovingAverage (ChiroDiff's EMA): a list of shadow tensors."""

    def __init__(self, parameters, decay: float = 0.9):
        self.decay = decay
        self.shadow_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def update(self, parameters) -> None:
        for shadow, p in zip(self.shadow_params, parameters):
            shadow.lerp_(p, 1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for shadow, saved in zip(self.shadow_params, state["shadow_params"]):
            shadow.copy_(saved)


class TinyModule(pl.LightningModule):
    def __init__(self, ema: str = "sparsedm"):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 8))
        self.ema = EMA(self.model, decay=0.9, warmup=False) if ema == "sparsedm" else None
        shadows = {"torch_ema": ShadowEma, "diffusers": EMAModel}  # both keep a list of shadow_params
        self.shadow_ema = shadows[ema](self.model.parameters(), decay=0.9) if ema in shadows else None
        self.model_ema = LitEmaLike(self.model) if ema == "litema" else None

    def training_step(self, batch, batch_idx):
        x, y = batch
        return (self.model(x) - y).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.model)
        if self.model_ema is not None:
            self.model_ema(self.model)
        if isinstance(self.shadow_ema, EMAModel):
            self.shadow_ema.step(self.model.parameters())
        elif self.shadow_ema is not None:
            self.shadow_ema.update(self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # as ChiroDiff keeps its torch_ema state
        if self.shadow_ema is not None:
            checkpoint["shadow_ema"] = self.shadow_ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.shadow_ema is not None:
            self.shadow_ema.load_state_dict(checkpoint["shadow_ema"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2, fused=True)


def loader(batch_size: int = 8) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sin(x * 2).roll(1, dims=1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def trainer(epochs: int, callbacks: list, folder=None, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        callbacks=callbacks,
        default_root_dir=folder,
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
