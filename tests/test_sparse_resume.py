import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("resume_script.py")


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, env=env)


@pytest.mark.parametrize("method", ["rigl", "magran"])
@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, method):
    # step 7 sits inside RigL's two-batch gradient window before the update at step 8
    run(method, 0, 14, tmp_path / "full.pt")
    run(method, 0, 7, tmp_path / "half.pt")
    run(method, 7, 14, tmp_path / "resumed.pt", tmp_path / "half.pt")
    full, resumed = (
        torch.load(tmp_path / "full.pt", weights_only=False),
        torch.load(tmp_path / "resumed.pt", weights_only=False),
    )
    for key in ("model",):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, resumed[key][name]), name
    for name, tensor in full["ema"]["module"].items():
        assert torch.equal(tensor, resumed["ema"]["module"][name]), name
    assert full["engine"]["step"] == resumed["engine"]["step"] == 14
    for name, mask in full["engine"]["masks"].items():
        assert torch.equal(mask, resumed["engine"]["masks"][name]), name
    for name, seen in full["engine"]["explored"].items():  # the exploration record crossed the break too
        assert torch.equal(seen, resumed["engine"]["explored"][name]), name
    half = torch.load(tmp_path / "half.pt", weights_only=False)
    if method == "rigl":  # the checkpoint carried the half-accumulated dense gradient across the break
        assert half["engine"]["dense_grads"]
    assert any(
        not torch.equal(half["engine"]["masks"][n], m) for n, m in full["engine"]["masks"].items()
    )  # updates happened after the break
