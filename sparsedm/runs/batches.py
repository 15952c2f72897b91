"""Deterministic batches: the global batch of step s depends only on (seed, s).

Epoch e visits the data in the order randperm(n, seed + e); batches drop the last partial one. Because the
position in the data is a function of the step, a resumed run reads exactly the batches it would have read,
and with torchrun each rank takes its slice of the same global batch.
"""

import torch

from sparsedm.errors import UserError


class BatchSchedule:
    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise UserError(
                f"the training set has {n} items, fewer than train.batch_size={batch_size}; if the data set should be larger, "
                "check data.root and data.format against what the loader's log says it read, else lower the batch size"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.batches_per_epoch = n // batch_size
        self._epoch, self._order = -1, None

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> list:
        epoch, b = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._epoch = epoch
        batch = self._order[b * self.batch_size : (b + 1) * self.batch_size]
        return batch[rank::world_size].tolist()
