import pytest
import torch
from tiny_models import TinyGRU, tiny_unet
from torch import nn

from sparsedm.sparse import SparseConfig, SparseEngine, count_parameters, forward_flops, train_flops_per_step


def test_linear_flops_scale_with_density():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(5, 32)
    flops = forward_flops(model, (x,), {"0.weight": 0.25})
    assert flops["flops_forward_dense"] == 2 * 5 * (32 * 64 + 64 * 8)
    assert flops["flops_forward_sparse"] == 2 * 5 * (32 * 64 * 0.25 + 64 * 8)


def test_gru_and_attention_flops_are_counted():
    gru = TinyGRU()
    x, t = torch.randn(2, 7, 3), torch.tensor([1, 2])
    densities = {"gru.weight_ih_l0": 0.5, "gru.weight_hh_l0": 0.5}
    flops = forward_flops(gru, (x, t), densities)
    # the GRU's matmuls: 2 (mult+add) x batch x length x weight size, for every layer and direction
    gru_matmul = sum(2 * 2 * 7 * p.numel() for n, p in gru.gru.named_parameters() if "weight" in n)
    own = 2 * 2 * 7 * (gru.gru.weight_ih_l0.numel() + gru.gru.weight_hh_l0.numel())
    assert flops["flops_forward_dense"] >= gru_matmul
    assert flops["flops_forward_dense"] - flops["flops_forward_sparse"] == pytest.approx(own * 0.5, rel=0.02)


class SelfAttention(nn.Module):
    def forward(self, q):
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_attention_is_counted_through_the_math_backend():
    q = torch.randn(2, 4, 16, 8)  # batch, heads, length, head dim
    flops = forward_flops(SelfAttention(), (q,), {})
    assert flops["flops_forward_dense"] == 2 * (2 * 2 * 4 * 16 * 16 * 8)  # QK^T and AV

    unet = tiny_unet()
    engine = SparseEngine(unet, torch.optim.AdamW(unet.parameters()), SparseConfig(method="static", sparsity=0.5))
    flops = forward_flops(unet, (torch.randn(1, 3, 8, 8), torch.tensor([1])), engine.densities)
    assert 0.4 < flops["flops_forward_sparse"] / flops["flops_forward_dense"] < 0.9


def test_parameter_counts_of_a_sparse_model():
    model = TinyGRU()
    engine = SparseEngine(
        model,
        torch.optim.AdamW(model.parameters()),
        SparseConfig(method="static", sparsity=0.5, distribution="uniform"),
    )
    counts = count_parameters(model, engine.masks)
    total = sum(p.numel() for p in model.parameters())
    sparse_total = sum(p.numel() for p in engine.params.values())
    assert counts["params_total"] == total
    assert abs(counts["params_nonzero"] - (total - sparse_total / 2)) <= len(engine.params)
    assert counts["params_nonzero"] == sum(int((p != 0).sum()) for p in model.parameters()) + sum(
        int((p == 0).sum()) for n, p in model.named_parameters() if n not in engine.masks
    )


def test_training_flops_per_method():
    assert train_flops_per_step("dense", 1.0, 4.0, 100) == 12.0
    assert train_flops_per_step("static", 1.0, 4.0, 100) == 3.0
    assert train_flops_per_step("magran", 1.0, 4.0, 100) == 3.0
    assert train_flops_per_step("rigl", 1.0, 4.0, 100) == pytest.approx((300 + 2 + 4) / 101)


class CudnnLikeVF:
    """torch._VF whose GRU, off the CPU, runs a fused kernel the FLOP counter has no formula for, as
    `aten._cudnn_rnn` on CUDA: the counter sees none of its work."""

    def __getattr__(self, name):
        return getattr(torch._VF, name)

    def gru(self, input, hx, *args):
        if input.device.type == "cpu":
            return torch._VF.gru(input, hx, *args)
        bidirectional, batch_first = args[-2], args[-1]
        length, batch = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
        shape = (batch, length) if batch_first else (length, batch)
        return input.new_zeros(*shape, (2 if bidirectional else 1) * hx.shape[-1]), hx


def test_flops_are_counted_on_a_cpu_copy_whatever_the_model_device(monkeypatch):
    """A GPU run's path: the model is off the CPU, where its GRU kernel is invisible to the counter. The meta
    device stands in for the GPU (no GPU is needed): the figure must equal the CPU model's."""
    monkeypatch.setattr(torch.nn.modules.rnn, "_VF", CudnnLikeVF())
    x, t = torch.randn(2, 7, 3), torch.tensor([1, 2])
    densities = {"gru.weight_ih_l0": 0.5, "gru.weight_hh_l0": 0.5}
    on_cpu = forward_flops(TinyGRU(), (x, t), densities)
    with torch.device("meta"):
        elsewhere = TinyGRU()
    flops = forward_flops(elsewhere, (x.to("meta"), t.to("meta")), densities)
    assert flops == on_cpu
    assert all(p.is_meta for p in elsewhere.parameters())  # counted on a copy: the model is left where it was
