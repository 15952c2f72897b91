"""train.log_to=[jsonl, wandb]: an offline wandb run holds what TensorBoard gets (scalars, mask statistics,
sample grids), read back from its .wandb file."""

import sys

import numpy as np
import pytest
from PIL import Image
from wandb_records import history

from sparsedm.cli import main
from sparsedm.errors import UserError
from sparsedm.runs.run_dir import RunDir
from sparsedm.train.loggers import check_log_to, start_wandb, wandb_mode

TINY = ["model.num_layers=1", "train.log_every=4", "train.val_batches=1", "sparse.update_interval=4"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_cache):
    out = tmp_path_factory.mktemp("wandb") / "run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        args = ["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress", tiny_cache]
        options = ["train.steps=12", "train.val_every=6", "train.sample_every=6", "sparse.method=rigl"]
        assert main([*args, *TINY, *options, "train.log_to=[jsonl,wandb]", "data.max_items=240"]) == 0
    return out


@pytest.mark.slow  # wandb-core's start and a 12-step run: 5 to 13 s
def test_the_wandb_run_holds_the_logged_scalars(logged):
    steps = history(logged)
    records = RunDir(logged).read_metrics()
    train = [r for r in records if "loss" in r and "event" not in r]
    updates = [r for r in records if r.get("event") == "mask_update"]
    validations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == [4, 8, 12] and len(updates) >= 2 and len(validations) == 3
    for r in train:
        logged_step = steps[r["step"]]
        assert logged_step["train/loss"] == r["loss"] and logged_step["train/sparsity"] == r["sparsity"]
        assert logged_step["train/lr"] == r["lr"]
    for r in updates:
        assert steps[r["step"]]["mask_update/replaced"] == r["replaced"]
        assert steps[r["step"]]["mask_update/exploration_rate"] == r["exploration_rate"]
    for r in validations:
        assert steps[r["step"]]["val/loss"] == r["val_loss"]
        assert steps[r["step"]]["val/train_split_loss"] == r["train_split_loss"]


@pytest.mark.slow  # wandb-core's start and a 12-step run: 5 to 13 s
def test_the_wandb_run_holds_the_sample_grids(logged):
    steps = history(logged)
    grids = {step: items for step, items in steps.items() if "samples/path" in items}
    assert sorted(grids) == [6, 12]
    (run_dir,) = (logged / "wandb").glob("offline-run-*")
    for items in grids.values():
        picture = np.asarray(Image.open(run_dir / "files" / items["samples/path"]))
        assert picture.shape[:2] == (items["samples/height"], items["samples/width"]) and picture.std() > 0


@pytest.mark.slow  # wandb-core's start and a 12-step run: 5 to 13 s
def test_the_run_id_is_kept_for_a_resume(logged):
    (run_dir,) = (logged / "wandb").glob("offline-run-*")
    assert run_dir.name.endswith("-" + (logged / "wandb" / "run_id").read_text())


def test_wandb_is_offline_where_its_server_does_not_answer(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"  # the user's choice is used


def test_log_to_accepts_wandb_and_a_missing_package_is_one_line(monkeypatch, tmp_path):
    assert check_log_to(["jsonl", "wandb"]) == ["jsonl", "wandb"]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"^train.log_to includes wandb, which is not installed; pip install wandb"):
        start_wandb(RunDir(tmp_path))


@pytest.mark.slow  # three starts of wandb-core
def test_a_resume_continues_the_wandb_run_and_a_new_run_starts_another(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    ids = []
    for resume in (False, True, False):  # the first run, its resume, then --overwrite's new run
        wandb_run = start_wandb(RunDir(tmp_path), resume=resume)
        ids.append(wandb_run.id)
        wandb_run.finish()
    assert ids[1] == ids[0] != ids[2] and (tmp_path / "wandb" / "run_id").read_text() == ids[2]
