"""Sparse-to-sparse training of a diffusers UNet2DModel in a plain PyTorch loop, with RigL.

    python examples/sparsify_unet.py            # about a minute on 2 CPU cores

The five engine lines are marked "# sparse". Everything else is an ordinary DDPM training loop.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import DDPMScheduler, UNet2DModel

from sparsedm.sparse import EMA, SparseConfig, SparseEngine, format_report


def toy_images(n: int, size: int = 16, generator=None) -> torch.Tensor:
    """Soft discs at random places: a data set with structure a denoiser can learn in a minute."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=generator) * (size - 6) + 3
    dist = ((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2).sqrt()
    disc = (dist < 3).float() * 2 - 1
    return disc[:, None].repeat(1, 3, 1, 1)


def main(steps: int = 200, batch_size: int = 32, update_interval: int = 50) -> SparseEngine:
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    ema = EMA(model, decay=0.999)
    config = SparseConfig(method="rigl", sparsity=0.5, prune_rate=0.3, update_interval=update_interval)
    engine = SparseEngine(model, optimizer, config, total_steps=steps, ema=ema)  # sparse

    data_gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        x0 = toy_images(batch_size, generator=data_gen)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,))
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        engine.after_backward()  # sparse: RigL's dense gradient, then masked gradients
        optimizer.step()
        update = engine.after_optimizer_step()  # sparse: drop/grow every ΔT
        ema.update(model)  # sparse: the EMA keeps the masks too
        if update or step % update_interval == 0:
            print(
                f"step {step:4d} loss {loss.item():.4f} sparsity {engine.sparsity():.3f}"
                + (f" replaced {update['replaced']}" if update else "")
            )

    print(format_report(engine.report()))  # sparse
    zeros = sum(int((p == 0).sum()) for p in engine.params.values())
    print(f"zeros in the sparse tensors: {zeros} of {sum(p.numel() for p in engine.params.values())}")
    return engine


if __name__ == "__main__":
    main()
