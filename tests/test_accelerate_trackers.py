"""examples/train_unconditional_sparse.py --report-to tensorboard|wandb (diffusers' examples' option): both
trackers get the same loss, lr and mask updates, read back from TensorBoard's event file and wandb's offline
run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_records import history

pytest.importorskip("accelerate")
pytest.importorskip("wandb")

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_unconditional_sparse.py"
TINY = ["--num-images", "32", "--max-train-steps", "4", "--update-interval", "2", "--lr-warmup-steps", "2"]


def run_example(out, tracker) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(EXAMPLE), "--out", str(out), *TINY, "--train-batch-size", "8", "--report-to", tracker]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def tensorboard_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = Path(folder).glob("train_unconditional_sparse/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow  # two runs of the example: 25 s
def test_tensorboard_and_wandb_get_the_same_scalars(tmp_path):
    printed = run_example(tmp_path / "wandb", "wandb")
    steps = history(tmp_path / "wandb")
    assert sorted(steps) == [1, 2, 3, 4]
    updates = re.findall(r"step (\d+): loss ([\d.]+), replaced (\d+) weights", printed)
    assert [int(step) for step, _, _ in updates] == [2]  # ΔT = 2; t_end = 0.75 of 4 steps
    for step, loss, replaced in updates:
        assert f"{steps[int(step)]['train/loss']:.4f}" == loss
        assert steps[int(step)]["mask_update/replaced"] == int(replaced)
    assert [s for s in steps if "mask_update/replaced" in steps[s]] == [2]

    run_example(tmp_path / "tensorboard", "tensorboard")
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"train/loss", "train/lr", "mask_update/replaced", "train/sparsity"}
    for tag, values in scalars.items():
        assert values == pytest.approx({s: steps[s][tag] for s in values}, rel=1e-6), tag  # TensorBoard keeps fp32
