"""The image study's kept autoencoder (docs/data/images/autoencoder) is the one configs/study_openmoji.yaml needs:
trained from configs/autoencoder_openmoji_study.yaml on the study's held-out split at its image size, finished,
and the autoencoder every archived run of the study was trained and decoded with."""

import json
from pathlib import Path

from sparsedm.autoencoder.model import FirstStage
from sparsedm.config import experiment, load_autoencoder_config, load_config
from sparsedm.config_loader import to_dict
from sparsedm.runs.run_dir import RunDir

KEPT = Path("docs/data/images/autoencoder")
ARCHIVE = Path("docs/data/images/runs")
STUDY = "configs/study_openmoji.yaml"


def test_the_kept_autoencoder_is_the_study_config_trained_on_the_study_split():
    kept = experiment(RunDir(KEPT).read_config())
    wanted = load_autoencoder_config("configs/autoencoder_openmoji_study.yaml")
    assert to_dict(kept.model) == to_dict(wanted.model) and to_dict(kept.train) == to_dict(wanted.train)
    study = load_config(STUDY)
    for field in ("name", "image_size", "val_size", "split_seed"):
        assert getattr(kept.data, field) == getattr(study.data, field), field
    summary = json.loads((KEPT / "summary.json").read_text())
    assert summary["steps"] == wanted.train.steps  # finished, not a checkpoint of an interrupted run
    stage = FirstStage(str(KEPT))
    assert stage.image_size == study.data.image_size and stage.kind == "vq"


def test_every_archived_run_of_the_study_used_the_kept_autoencoder():
    identity = FirstStage(str(KEPT)).identity
    evals = sorted(ARCHIVE.glob("*/eval/step_*.json"))
    assert evals, f"no archived scores under {ARCHIVE}"
    for path in evals:
        assert json.loads(path.read_text())["autoencoder_sha256"] == identity, path
