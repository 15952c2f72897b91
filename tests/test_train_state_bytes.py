"""The bytes a training run holds (train/state_bytes.py): each storage once, masked storage at the dense shape with
its masks beside it, compact storage at the non-zeros with its indices, and summary.json's record of a run."""

import json
import math

import pytest
import torch
from test_sparse_compact import Net, batches, compact, step
from tiny_models import tiny_chirodiff

from sparsedm.cli import main
from sparsedm.sparse import EMA, SparseConfig, SparseEngine
from sparsedm.train.state_bytes import held_bytes, training_state_bytes

PARTS = {"parameters", "gradients", "optimizer", "ema", "masks", "total"}


def test_a_storage_is_counted_once_however_many_tensors_view_it():
    t = torch.zeros(10, 4)
    assert held_bytes([t, t.view(-1), t[2:], None, 3]) == 160
    seen = set()
    assert held_bytes([t], seen) == 160 and held_bytes([t.t(), torch.zeros(3)], seen) == 12


def one_step(method: str, plan=None):
    """A state after one optimiser step at S = 0.9 (`plan`: a compact plan, None for masked storage)."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    ema = EMA(model, decay=0.9)
    engine = SparseEngine(model, optimizer, SparseConfig(method=method, sparsity=0.9, update_interval=3), 12, ema=ema)
    x, y = batches(1)[0]
    storage = compact(model, engine, plan, x) if plan else None
    step(model, optimizer, ema, engine, x, y)
    return training_state_bytes(model, optimizer, ema, engine), engine, storage


def test_masked_storage_holds_the_dense_state_and_the_masks_compact_storage_the_non_zeros():
    dense, _, _ = one_step("dense")
    masked, engine, _ = one_step("rigl")
    held, _, storage = one_step("rigl", "torch/torch/sampled")
    for record in (dense, masked, held):
        assert set(record) == PARTS and record["total"] == sum(v for k, v in record.items() if k != "total")
    numel = sum(p.numel() for p in Net().parameters())
    assert masked["parameters"] == masked["gradients"] == masked["ema"] == dense["parameters"] == 4 * numel
    assert masked["optimizer"] == dense["optimizer"] > 8 * numel  # two fp32 moments and the step counters
    # the masks cost one bool per weight of each sparse tensor, the exploration record one bit (whole bytes)
    masks = sum(m.numel() + -(-m.numel() // 8) for m in engine.masks.values())
    assert dense["masks"] == 0 and masked["masks"] == masks
    assert masked["total"] - dense["total"] == masked["masks"] == held["masks"]
    # compact: every compact layer holds nnz values, gradients, two moments and EMA values, plus its indices
    assert len(storage.layers) == 5
    freed = sum(4 * (math.prod(layer.weight_shape) - layer.values.numel()) for layer in storage.layers.values())
    indices = held_bytes(t for layer in storage.layers.values() for t in layer.pattern.tensors())
    assert held["parameters"] == masked["parameters"] - freed + indices
    assert held["gradients"] == masked["gradients"] - freed and held["ema"] == masked["ema"] - freed
    assert held["optimizer"] == masked["optimizer"] - 2 * freed
    assert held["parameters"] + held["gradients"] + held["optimizer"] < 0.5 * (
        masked["parameters"] + masked["gradients"] + masked["optimizer"]
    )
    assert held["total"] < dense["total"] < masked["total"]


def train(out, cache, *extra):
    common = ["train.steps=2", "train.val_batches=1", "sparse.method=rigl", "sparse.sparsity=0.9"]
    args = ["train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress"]
    assert main([*args, *tiny_chirodiff(), cache, *common, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def summaries(tmp_path_factory, tiny_cache):
    out = tmp_path_factory.mktemp("state_bytes")
    return {
        kernels: train(out / kernels.replace("/", "-"), tiny_cache, f"sparse.kernels={kernels}")
        for kernels in ("masked", "torch/torch/sampled")
    }


def test_a_run_records_its_training_state_bytes_in_the_summary(summaries):
    masked, held = (summaries[k]["train_state_bytes"] for k in ("masked", "torch/torch/sampled"))
    for record in (masked, held):
        assert set(record) == PARTS and record["total"] == sum(v for k, v in record.items() if k != "total")
    summary = summaries["masked"]
    params = 4 * summary["params_total"]  # fp32
    assert masked["parameters"] == masked["gradients"] == masked["ema"] == params and masked["optimizer"] > 2 * params
    masks = sum(t["numel"] + -(-t["numel"] // 8) for t in summary["tensors"])
    assert masked["masks"] == held["masks"] == masks
    assert held["gradients"] < masked["gradients"] and held["optimizer"] < masked["optimizer"]
    assert held["total"] < masked["total"]
