"""diffusers' unconditional training example (train_unconditional.py), shortened, sparse-trained with RigL.

    python examples/train_unconditional_sparse.py --out runs/uncond   # one process: 1.5 min on 2 busy CPU cores
    accelerate launch --multi_gpu --num_processes 2 examples/train_unconditional_sparse.py \
        --out runs/uncond --gradient-accumulation-steps 2 --mixed-precision bf16

A UNet2DModel, DDPMScheduler, diffusers' EMAModel, Accelerate (processes, gradient accumulation, mixed
precision, save_state), a DDPMPipeline saved with the EMA's weights at the end, and a data set that needs no
network: soft discs made on the fly, or `--data openmoji` (the OpenMoji emoji the project renders from npm's
openmoji package, fetched once into `--cache`). The sparse lines are marked "# sparse"; everything else is the
ordinary loop. On a machine without GPUs, set ACCELERATE_USE_CPU=true: `--cpu` makes accelerate launch start
one process, `--multi_gpu` starts them with torchrun and Accelerate falls back to CPU processes on gloo.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

import sparsedm.integrations.accelerate as sparse  # sparse
from sparsedm.sparse import SparseConfig, format_report
from sparsedm.train.loggers import wandb_mode


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder: checkpoints/, masks, model, pipeline/, summary")
    parser.add_argument("--data", choices=["discs", "openmoji"], default="discs")
    parser.add_argument("--cache", default=".cache/openmoji", help="--data openmoji: where the package is kept")
    parser.add_argument("--num-images", type=int, default=512, help="--data discs: how many to make")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--train-batch-size", type=int, default=16, help="per process and micro-batch")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-train-steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-warmup-steps", type=int, default=20)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--ema-max-decay", type=float, default=0.999)
    parser.add_argument("--ema-inv-gamma", type=float, default=1.0)
    parser.add_argument("--ema-power", type=float, default=3 / 4)
    parser.add_argument("--checkpointing-steps", type=int, default=0, help="save_state every N steps (0: never)")
    parser.add_argument("--resume-from-checkpoint", default=None, help="a folder that save_state wrote")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report-to", choices=["tensorboard", "wandb"], help="tracker of loss, lr and mask updates, in --out"
    )
    parser.add_argument("--sparsity", type=float, default=0.5)  # sparse
    parser.add_argument("--prune-rate", type=float, default=0.3)  # sparse
    parser.add_argument("--update-interval", type=int, default=50)  # sparse
    return parser.parse_args(argv)


class Images(torch.utils.data.Dataset):
    """Images in [-1, 1] with their index, so that each sample's noise and timestep depend on it alone."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


def discs(n: int, size: int, seed: int) -> torch.Tensor:
    """Soft coloured discs at random places: structure a small UNet learns in minutes."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=gen) * (size / 2) + size / 4
    radius = size / 5 + torch.rand(n, generator=gen) * size / 8
    dist = ((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2).sqrt()
    disc = torch.sigmoid((radius[:, None, None] - dist) * 2)
    colour = torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1
    return disc[:, None] * colour + (1 - disc[:, None]) * -1


def openmoji(size: int, cache: str) -> torch.Tensor:
    from sparsedm.data.images.openmoji import openmoji_images

    images = torch.from_numpy(openmoji_images(size, cache).images).permute(0, 3, 1, 2)
    return images.float() / 127.5 - 1


def make_model(resolution: int) -> UNet2DModel:
    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def noise_and_timesteps(indices: torch.Tensor, epoch: int, seed: int, shape, num_timesteps: int):
    """Per-sample noise and t from (seed, epoch, index): the same for any batch size, process count or resume."""
    noise, t = [], []
    for i in indices.tolist():
        gen = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + i)
        noise.append(torch.randn(shape, generator=gen))
        t.append(torch.randint(0, num_timesteps, (1,), generator=gen))
    return torch.stack(noise), torch.cat(t)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=args.report_to,
        project_dir=str(out),
    )
    set_seed(args.seed)
    images = (
        discs(args.num_images, args.resolution, args.seed)
        if args.data == "discs"
        else openmoji(args.resolution, args.cache)
    )
    loader = torch.utils.data.DataLoader(Images(images), batch_size=args.train_batch_size, shuffle=True, drop_last=True)

    model = make_model(args.resolution)
    ema_model = EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=UNet2DModel,
        model_config=model.config,
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-2, fused=True)
    lr_scheduler = get_scheduler(
        "cosine",
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema_model.to(accelerator.device)
    sparse_config = SparseConfig(  # sparse
        method="rigl", sparsity=args.sparsity, prune_rate=args.prune_rate, update_interval=args.update_interval
    )
    engine = sparse.prepare_engine(  # sparse: the EMA is kept sparse and checkpointed, before the engine
        accelerator, model, optimizer, sparse_config, args.max_train_steps, ema_model
    )

    out.mkdir(parents=True, exist_ok=True)
    config = {key: value for key, value in vars(args).items() if value is not None}  # TensorBoard takes no None
    # wandb offline where its server does not answer (sparsedm's rule for train.log_to=[..., wandb])
    wandb_settings = {"wandb": {"dir": str(out), "mode": wandb_mode()}} if args.report_to == "wandb" else {}
    accelerator.init_trackers("train_unconditional_sparse", config, init_kwargs=wandb_settings)
    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    step = 0
    if args.resume_from_checkpoint:
        accelerator.load_state(args.resume_from_checkpoint)  # weights, optimiser, lr, EMA and engine (masks)
        step = engine.step
    updates = []
    while step < args.max_train_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip * args.gradient_accumulation_steps) if skip else loader
        for x0, indices in batches:
            noise, t = noise_and_timesteps(indices, epoch, args.seed, x0.shape[1:], 1000)
            noise, t = noise.to(x0.device), t.to(x0.device)
            with accelerator.accumulate(model):
                pred = model(noise_scheduler.add_noise(x0, noise, t), t).sample
                loss = F.mse_loss(pred.float(), noise)
                accelerator.backward(loss)
                sparse.after_backward(accelerator, engine, args.max_grad_norm)  # sparse: mask, RigL's gradient
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            update = engine.after_optimizer_step()  # sparse: drop and grow every ΔT
            ema_model.step(model.parameters())
            step += 1
            logs = {"train/loss": loss.item(), "train/lr": lr_scheduler.get_last_lr()[0]}
            if update:
                logs |= {"mask_update/replaced": update["replaced"], "train/sparsity": engine.sparsity()}  # sparse
            accelerator.log(logs, step=step)
            if update:
                updates.append(update)
                accelerator.print(f"step {step}: loss {loss.item():.4f}, replaced {update['replaced']} weights")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                accelerator.save_state(str(out / "checkpoints" / f"step_{step}"))
            if step >= args.max_train_steps:
                break

    rank = accelerator.process_index
    torch.save({"masks": engine.masks, "step": engine.step}, out / f"masks_rank{rank}.pt")  # sparse
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(model)
        torch.save(unet.state_dict(), out / "model.pt")
        ema_model.store(unet.parameters())
        ema_model.copy_to(unet.parameters())  # the pipeline samples with the EMA's weights, as diffusers' does
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(out / "pipeline")
        ema_model.restore(unet.parameters())
        summary = {
            "steps": step,
            "sparsity": engine.sparsity(),
            "updates": len(updates),
            "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        accelerator.print(format_report(engine.report()))  # sparse
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return engine


if __name__ == "__main__":
    main()
