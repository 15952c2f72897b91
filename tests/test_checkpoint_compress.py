"""Compressed checkpoints: the zeros of sparse weights, EMA and Adam moments stored as bit-packed masks, read
back bit-identically, so a sparse run's checkpoint shrinks with S."""

import torch

from sparsedm.cli import main
from sparsedm.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sparsedm.sparse.compress import expand_tensors, shrink_tensors


def bits(tensor):
    return tensor.contiguous().view(torch.int32) if tensor.dtype == torch.float32 else tensor


def test_shrink_and_expand_restore_every_bit_of_a_nested_state():
    sparse = torch.zeros(64, 32)
    sparse[::7, ::5] = torch.randn(10, 7)
    sparse[1, 1], sparse[2, 2] = -0.0, float("nan")  # -0.0 and NaN must come back as they were
    state = {
        "model": {"w": sparse, "b": torch.randn(32), "count": torch.arange(5)},
        "optimizer": {"state": {0: {"exp_avg": sparse * 2, "step": torch.tensor(3.0)}}, "groups": [{"lr": 0.1}]},
        "list": [sparse.clone(), 7, "text"],
    }
    shrunk = shrink_tensors(state)
    assert isinstance(shrunk["model"]["w"], dict) and isinstance(shrunk["model"]["b"], torch.Tensor)  # dense stays
    back = expand_tensors(shrunk)
    assert torch.equal(bits(back["model"]["w"]), bits(sparse))
    assert torch.equal(bits(back["optimizer"]["state"][0]["exp_avg"]), bits(sparse * 2))
    assert torch.equal(bits(back["list"][0]), bits(sparse)) and back["list"][1:] == [7, "text"]
    assert torch.equal(back["model"]["count"], torch.arange(5)) and back["optimizer"]["groups"] == [{"lr": 0.1}]


def test_a_compressed_checkpoint_loads_with_weights_only_and_is_smaller(tmp_path):
    weights = torch.zeros(256, 256)
    weights[:, :25] = torch.randn(256, 25)  # S ~ 0.9
    state = {"step": 1, "model": {"w": weights}, "optimizer": {}, "ema": {"module": {"w": weights.clone()}}}
    state.update(engine={}, task={})
    small = save_checkpoint(state, tmp_path / "small", 1, keep=1, compress=True)
    large = save_checkpoint(state, tmp_path / "large", 1, keep=1, compress=False)
    assert small.stat().st_size < 0.25 * large.stat().st_size
    assert torch.equal(load_checkpoint(small)["model"]["w"], weights)


def checkpoint_of(tmp_path, tiny_run, name, *overrides):
    out = tmp_path / name
    argv = ["train", "configs/chirodiff_kanjivg_cpu.yaml", *tiny_run, "model.hidden_size=64"]
    argv += ["--out", str(out)]
    argv += ["sparse.method=rigl", "sparse.sparsity=0.9", "train.steps=4", "train.checkpoint_every=4"]
    argv += ["sparse.update_interval=2", "train.log_to=[jsonl]", "--no-progress", *overrides]
    assert main(argv) == 0
    return latest_checkpoint(out / "checkpoints")


def test_a_sparse_runs_checkpoint_shrinks_with_s_and_holds_the_same_state(tmp_path, tiny_run):
    compressed = checkpoint_of(tmp_path, tiny_run, "compressed")
    plain = checkpoint_of(tmp_path, tiny_run, "plain", "train.compress_checkpoints=false")
    ratio = compressed.stat().st_size / plain.stat().st_size
    assert ratio < 0.35, ratio  # weights, EMA and both Adam moments are 90% exact zeros
    a, b = load_checkpoint(compressed), load_checkpoint(plain)
    for key in ("model", "ema"):
        for name, tensor in b[key].items() if key == "model" else b[key]["module"].items():
            other = a[key][name] if key == "model" else a[key]["module"][name]
            assert torch.equal(other, tensor), name
    for index, slots in b["optimizer"]["state"].items():
        for slot, tensor in slots.items():
            assert torch.equal(a["optimizer"]["state"][index][slot], tensor), (index, slot)
