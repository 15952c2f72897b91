"""Random left-right flips that survive a resume and any number of ranks.

LDM's LSUN loader mirrors each training image with p = 0.5 (`transforms.RandomHorizontalFlip(p=flip_p)` in
ldm/data/lsun.py). Here the latents of every training image and of its mirror are cached, and sample i of a
batch takes the mirror when a uniform draw from its own generator is below p. That generator is seeded from the
sample's seed (the trainer's, a function of seed, step and position in the global batch), mixed so that its
stream is not the one the sample's timestep and noise come from: the choice is the same after a resume and on
any rank that holds the sample.
"""

import torch

_MIX = 6364136223846793005  # Knuth's MMIX multiplier: a sample's seed -> its flip generator's seed
_INCREMENT = 1442695040888963407


def flip_seed(seed: int) -> int:
    return (seed * _MIX + _INCREMENT) % 2**63


def mirror_choices(seeds: torch.Tensor, p: float) -> torch.Tensor:
    """Bool per sample: take the mirror, with probability p, from the sample's seed alone."""
    draws = [torch.rand(1, generator=torch.Generator().manual_seed(flip_seed(int(s)))) for s in seeds.tolist()]
    return torch.cat(draws) < p
