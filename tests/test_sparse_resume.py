import os
import re
import subprocess
import sys
from dataclasses import fields, replace
from enum import Enum
from pathlib import Path

import pytest
import torch
from tiny_models import TinyGRU, gru_loss, sparse_step

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.resume_rules import APPLIED

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


def _engine(config: SparseConfig):
    torch.manual_seed(0)
    model = TinyGRU()
    return SparseEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-2), config, total_steps=8)


# the GRU's weights only: their 2-D shapes divide by sparse.block_size's other value, 2 (the projections' do not)
BASE = SparseConfig(method="rigl", sparsity=0.6, update_interval=2, t_end=1.0, include=["gru"])
# strings have no generic "other valid value"; a new string field needs one here (the test fails until it has)
OTHER_STRINGS = {"method": "magran", "kernels": "compact"}


def _another_value(name: str, value, parameter: str):
    """A valid value of the field other than `value`; `parameter` is a sparse tensor's name (for regexes)."""
    if name in OTHER_STRINGS:
        return OTHER_STRINGS[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, Enum):
        return next(member for member in type(value) if member != value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.9  # every float field's range holds 0.9 x a value inside it
    if isinstance(value, list):
        return [*value, re.escape(parameter)]
    if isinstance(value, dict):
        return {**value, re.escape(parameter): 0.5}
    raise AssertionError(f"sparse.{name}: no other value for a {type(value).__name__}; add one to the test")


@pytest.mark.parametrize("name", [f.name for f in fields(SparseConfig)])
def test_a_resume_that_changes_a_sparse_key_is_refused_or_applied(name):
    """Every field of SparseConfig (a new one too): either refused in one line naming the checkpoint's value, or
    (resume_rules.APPLIED) the new value is the engine's while the masks and counts stay the checkpoint's."""
    trained = _engine(BASE)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):  # two mask updates: the state is not the one a new engine builds
        sparse_step(trained.model, gru_loss, trained, trained.optimizer, generator)
    state = trained.state_dict()
    new_value = _another_value(name, getattr(BASE, name), next(iter(trained.masks)))
    resumed = _engine(replace(BASE, **{name: new_value}))
    if name in APPLIED:
        resumed.load_state_dict(state)
        assert getattr(resumed.config, name) == new_value
        assert resumed.target_sparsity == trained.target_sparsity and resumed.nonzeros == trained.nonzeros
        for tensor, mask in trained.masks.items():
            assert torch.equal(resumed.masks[tensor], mask), tensor
        return
    with pytest.raises(UserError) as refused:
        resumed.load_state_dict(state)
    old = getattr(BASE, name)
    assert str(refused.value) == (
        f"the checkpoint was trained with sparse.{name}={old.value if isinstance(old, Enum) else old}, not "
        f"{new_value.value if isinstance(new_value, Enum) else new_value}; resume with that value or start a new run"
    )


def test_an_alias_of_the_method_resumes():
    trained = _engine(replace(BASE, method="magran"))
    _engine(replace(BASE, method="set")).load_state_dict(trained.state_dict())


def test_a_state_that_is_not_an_engine_s_is_refused_in_one_line():
    """An EMA's state handed to the engine (Accelerate's custom_checkpoint order of older checkpoints) is named,
    not a KeyError."""
    model = TinyGRU()
    optimizer = torch.optim.Adam(model.parameters())
    engine = SparseEngine(model, optimizer, SparseConfig(method="rigl", sparsity=0.5), total_steps=10)
    with pytest.raises(UserError, match=r"not an engine's .*'decay'") as caught:
        engine.load_state_dict({"decay": 0.999, "shadow_params": []})
    assert "\n" not in str(caught.value)


def test_a_resume_with_another_total_steps_is_refused_where_it_moves_t_end():
    saved = _engine(BASE).state_dict()  # t_end = 1.0 of total_steps = 8: updates end at step 8
    torch.manual_seed(0)
    model = TinyGRU()
    longer = SparseEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-2), BASE, total_steps=16)
    with pytest.raises(UserError, match=r"^the checkpoint's mask updates end at step 8, this engine's at 16 "):
        longer.load_state_dict(saved)
    # t_end given as a step does not move with total_steps: the same checkpoint state resumes
    as_step = replace(BASE, t_end=8)
    saved = _engine(as_step).state_dict()
    model = TinyGRU()
    SparseEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-2), as_step, total_steps=16).load_state_dict(saved)
