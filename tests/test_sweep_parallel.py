"""Worker processes for sweeps: results and errors come back by name, each worker runs single-threaded."""

import pytest
import torch

from sparsedm.errors import UserError
from sparsedm.experiments.parallel import run_in_workers


def threads_or_error(value: int):
    """Runs in a spawned worker (imported there by name)."""
    if value < 0:
        raise UserError(f"{value} is negative")
    return value, torch.get_num_threads()


@pytest.mark.slow
def test_workers_return_results_and_errors_by_name():
    results = run_in_workers(threads_or_error, {"a": (2,), "b": (-1,), "c": (3,)}, workers=2, progress=False)
    assert results["a"] == (2, 1) and results["c"] == (3, 1)
    assert isinstance(results["b"], UserError) and str(results["b"]) == "-1 is negative"
