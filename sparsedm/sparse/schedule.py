"""When the topology changes, and by how much.

An update happens at step t (counted from 1) when t % ΔT == 0 and t <= t_end. The fraction of a tensor's
active weights replaced there is p_t = p · (1 + cos(π t / t_end)) / 2 (cosine decay, RigL's) or p.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateSchedule:
    update_interval: int  # ΔT
    end_step: int  # t_end, as a step
    prune_rate: float  # p
    decay: str = "cosine"  # cosine | constant

    def is_update_step(self, t: int) -> bool:
        return t > 0 and t % self.update_interval == 0 and t <= self.end_step

    def prune_fraction(self, t: int) -> float:
        """p_t, the fraction of active weights to drop (and regrow) at step t."""
        if self.decay == "constant":
            return self.prune_rate
        return self.prune_rate * (1 + math.cos(math.pi * t / self.end_step)) / 2

    def next_update_step(self, t: int) -> int:
        """The first update step >= t, or -1 when no update is left."""
        step = -(-t // self.update_interval) * self.update_interval
        return step if 0 < step <= self.end_step else -1
