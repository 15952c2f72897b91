"""What an exported folder tells a reader without sparsedm: the model card (README.md with Hub metadata) and the
two safetensors files that docs/format.md specifies, read with safetensors and numpy alone by the doc's code."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ldm_helpers import ldm_overrides, train_tiny_autoencoder, write_shapes
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import save_file

from sparsedm.cli import main
from sparsedm.errors import UserError
from sparsedm.inference.export import COMPRESSED_UNET, MASKS, load_masks
from sparsedm.inference.model_card import CARD
from sparsedm.runs.checkpoint import load_checkpoint
from sparsedm.runs.run_dir import RunDir
from sparsedm.sparse.compress import FORMAT_VERSION_KEY, load_compressed

STEPS = 20
FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_card")
    images = write_shapes(root / "shapes")
    train_tiny_autoencoder(images, root / "cache", root / "ae", steps=20)
    args = ["train", "configs/ldm_openmoji_cpu.yaml", "--out", str(root / "run"), "--no-progress"]
    overrides = [f"train.steps={STEPS}", "sparse.method=rigl", "sparse.sparsity=0.6", "sparse.update_interval=5"]
    assert main([*args, *ldm_overrides(images, root / "cache", root / "ae"), *overrides]) == 0
    # what `sparsedm evaluate` writes for the final step (its own tests cover it; the card only reads it)
    (root / "run" / "eval").mkdir()
    (root / "run" / "eval" / f"step_{STEPS:08d}.json").write_text(json.dumps({"fid": 123.25, "kid": 0.0421}))
    assert main(["export", str(root / "run"), "--out", str(root / "pipeline"), "--compress"]) == 0
    return root


def doc_reader() -> dict:
    """The names docs/format.md's Python block defines; it may import only json, numpy and safetensors."""
    (block,) = re.findall(r"```python\n(.*?)```", FORMAT_DOC.read_text(), re.S)
    imported = set(re.findall(r"^(?:from|import) (\w+)", block, re.M))
    assert imported <= {"json", "numpy", "safetensors"}, imported
    names = {}
    exec(block, names)
    return names


def test_the_doc_reads_the_weights_and_masks_bit_for_bit(exported):
    folder = exported / "pipeline"
    reader = doc_reader()
    state, stored_masks = reader["read_sparse_unet"](str(folder))
    masks = reader["read_masks"](str(folder))
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(state) == set(unet) and masks
    for name, weight in unet.items():
        assert state[name].dtype == weight.dtype and state[name].shape == weight.shape
        assert state[name].tobytes() == weight.tobytes(), name  # every bit, -0.0 included
    run = load_checkpoint(sorted(RunDir(exported / "run").checkpoints.iterdir())[-1])
    assert set(masks) == set(stored_masks) == set(run["engine"]["masks"])
    for name, mask in masks.items():
        assert mask.dtype == np.bool_ and np.array_equal(mask, run["engine"]["masks"][name].numpy())
        assert np.array_equal(stored_masks[name], mask)
        assert (unet[name][~mask] == 0).all()


def test_both_files_carry_the_format_version(exported):
    for name in (MASKS, COMPRESSED_UNET):
        with safe_open(exported / "pipeline" / name, framework="np") as f:
            assert f.metadata()[FORMAT_VERSION_KEY] == "1"


def rewrite_version(source: Path, target: Path, version: str) -> Path:
    with safe_open(source, framework="pt") as f:
        tensors, metadata = {n: f.get_tensor(n) for n in f.keys()}, f.metadata()
    save_file(tensors, target, metadata={**metadata, FORMAT_VERSION_KEY: version})
    return target


def test_files_of_an_unknown_version_are_refused_in_one_line(exported, tmp_path):
    folder = tmp_path / "future"
    folder.mkdir()
    rewrite_version(exported / "pipeline" / MASKS, folder / MASKS, "2")
    compressed = rewrite_version(exported / "pipeline" / COMPRESSED_UNET, folder / COMPRESSED_UNET, "2")
    for load in (lambda: load_masks(folder), lambda: load_compressed(compressed)):
        with pytest.raises(UserError) as error:
            load()
        message = str(error.value)
        assert "sparsedm.format_version='2'" in message and "reads version 1" in message and "\n" not in message
    with pytest.raises(ValueError, match="format version 2"):
        doc_reader()["read_masks"](str(folder))


def test_files_without_a_version_are_version_1(exported, tmp_path):
    """Folders exported before the key existed still load."""
    with safe_open(exported / "pipeline" / MASKS, framework="pt") as f:
        tensors, metadata = {n: f.get_tensor(n) for n in f.keys()}, f.metadata()
    del metadata[FORMAT_VERSION_KEY]
    save_file(tensors, tmp_path / MASKS, metadata=metadata)
    assert set(load_masks(tmp_path)) == set(tensors)


def card(exported):
    text = (exported / "pipeline" / CARD).read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_the_card_has_hub_metadata(exported):
    meta, _ = card(exported)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"sparsedm", "rigl", "diffusers:LDMPipeline"} <= set(meta["tags"])


def test_the_card_states_the_sparsity_costs_and_scores(exported):
    _, body = card(exported)
    rows = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", body, re.M))
    summary = RunDir(exported / "run").read_summary()
    assert rows["method"] == "rigl"
    assert rows["S (sparsity of the sparse tensors)"].startswith("0.6 (")
    assert rows["p (prune rate)"] == "0.1, cosine decay" and rows["ΔT (steps between mask updates)"] == "5"
    assert rows["distribution"] == "erk"
    assert rows["non-zero parameters of the UNet"].startswith(
        f"{summary['params_nonzero']:,} of {summary['params_total']:,}"
    )
    number = lambda text: float(text.split(" (")[0].replace(",", ""))  # noqa: E731
    assert number(rows["training FLOPs per step and sample"]) == pytest.approx(summary["flops_train_step"], rel=1e-3)
    assert number(rows["forward FLOPs per sample"]) == pytest.approx(summary["flops_forward_sparse"], rel=1e-3)
    assert f"(dense {summary['flops_forward_dense']:,})" in rows["forward FLOPs per sample"]
    assert rows["FID"] == "123.2" and rows["KID"] == "0.0421"
    assert rows["steps"] == f"{STEPS} of train.steps={STEPS}"
    assert rows["trained with"].startswith("sparsedm 0.1.0") and rows["exported with"].startswith("sparsedm 0.1.0")


def test_the_cards_load_lines_run(exported, monkeypatch):
    _, body = card(exported)
    (code,) = re.findall(r"```python\n(.*?)```", body, re.S)
    monkeypatch.chdir(exported / "pipeline")
    names = {}
    exec(code, names)
    assert set(names["masks"]) == set(load_masks("."))
    unet = names["pipe"].unet.state_dict()
    assert all(torch.equal(t, load_compressed(COMPRESSED_UNET)[0][n]) for n, t in unet.items())
