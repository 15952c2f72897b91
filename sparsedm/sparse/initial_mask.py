"""The initial mask part: which `n_active` entries of a tensor are active at step 0.

    InitialMask(shape, n_active, generator, device) -> bool tensor of `shape` with exactly n_active True

- random (every method of the paper, SNFS, GraNet): uniformly random positions, from the generator that is
  seeded identically on every rank.
"""

from typing import Callable, Optional, Sequence

import torch

from sparsedm.sparse.masks import random_mask

InitialMask = Callable[[Sequence[int], int, torch.Generator, Optional[torch.device]], torch.Tensor]

random = random_mask
