"""The seconds a run's training steps took: process CPU time (every thread of the process, so two intra-op
threads busy for a second count two) beside wall time, summed over the steps only (not validation, sampling,
checkpoints or logging) and carried across resumes in the checkpoint.

CPU seconds are the budget a fixed machine has (docs/curves.md pairs runs by them); wall seconds move with the
machine's load. Under torchrun each rank counts its own process; the run records rank 0's, whose steps do the
same work as every other rank's.
"""

import time


class StepClock:
    def __init__(self):
        self.cpu_s = 0.0  # process CPU seconds of the training steps so far
        self.wall_s = 0.0  # wall seconds of the same steps

    def __enter__(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu_s += time.process_time() - self._cpu
        self.wall_s += time.perf_counter() - self._wall

    def record(self) -> dict:
        """The keys metrics.jsonl and summary.json carry."""
        return {"train_cpu_s": self.cpu_s, "train_wall_s": self.wall_s}

    def state_dict(self) -> dict:
        return self.record()

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's sums; one written before the clock existed has none, and its steps count 0."""
        self.cpu_s, self.wall_s = state.get("train_cpu_s", 0.0), state.get("train_wall_s", 0.0)
