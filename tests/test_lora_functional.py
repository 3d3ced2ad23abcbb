"""LoRA math against naive loops."""

from __future__ import annotations

import math

import torch

from npcadapt.config import LoraConfig
from npcadapt.lora import functional as F


def naive_delta(x, a, b, scale):
    out = torch.zeros(x.shape[0], b.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        for o in range(b.shape[0]):
            out[n, o] = scale * sum(
                float(b[o, k]) * sum(float(a[k, i]) * float(x[n, i]) for i in range(x.shape[1]))
                for k in range(a.shape[0])
            )
    return out


def test_scaling_plain_and_rslora():
    assert LoraConfig(rank=8, alpha=16, targets=("actor.0",)).scale == 2.0
    assert math.isclose(LoraConfig(rank=8, alpha=16, rslora=True, targets=("actor.0",)).scale, 16 / math.sqrt(8))


def test_fresh_adapter_reproduces_base_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    a, b = F.init_lora(12, 7, 4, generator=gen)
    assert a.abs().sum() > 0 and (b == 0).all()
    assert a.abs().max() <= 1 / math.sqrt(12)
    lin = torch.nn.Linear(12, 7)
    x = torch.randn(9, 12)
    base = lin(x)
    assert torch.equal(base + F.lora_delta(x, a, b, 2.0), base)
    assert torch.equal(F.merge(lin.weight, a, b, 2.0), lin.weight)


def test_lora_delta_matches_naive():
    x, a, b = torch.randn(3, 5), torch.randn(2, 5), torch.randn(4, 2)
    got = F.lora_delta(x, a, b, 1.5)
    assert torch.allclose(got.double(), naive_delta(x, a, b, 1.5), atol=1e-5)


def test_merged_weight_equals_adapter_path():
    lin = torch.nn.Linear(6, 5)
    a, b = torch.randn(3, 6), torch.randn(5, 3)
    merged = F.merge(lin.weight, a, b, 0.7)
    x = torch.randn(4, 6)
    via_adapter = lin(x) + F.lora_delta(x, a, b, 0.7)
    via_merge = torch.nn.functional.linear(x, merged, lin.bias)
    assert torch.allclose(via_adapter, via_merge, atol=1e-5)


def test_gathered_delta_matches_per_row_naive():
    n, r, d_in, d_out = 6, 3, 5, 4
    x = torch.randn(n, d_in)
    a = torch.randn(n, r, d_in)
    b = torch.randn(n, d_out, r)
    got = F.gathered_delta(x, a, b.transpose(1, 2).contiguous(), 0.5)
    for i in range(n):
        want = naive_delta(x[i : i + 1], a[i], b[i], 0.5)
        assert torch.allclose(got[i : i + 1].double(), want, atol=1e-5)
