"""The 1-bit adapters' quantiser: its codebook, the straight-through gradient, packing, the exact stored bytes."""

from __future__ import annotations

import pytest
import timm
import torch

from methods import create_method
from methods.techniques.quant import OneBit, Quantise, codebook, pack, storage_bytes, unpack
from tests.conftest import run_cli
from tests.method_table import Case, D, L

CASES = [
    Case(("method=adaptformer", "method.bias=false", "quant=1bit"), tiny=L * 2 * D * 64),
    Case(("method=lora", "method.variant=qv", "method.dropout_at=hidden", "quant=1bit"), tiny=L * 2 * (D * 8 + 8 * D),
         merges=True),
    Case(("method=lora", "quant=1bit", "quant.bits=2", "quant.bi_head=true", "quant.label=2bit_bihead"),
         tiny=L * (D * 8 + 8 * 3 * D), merges=True),
]


def test_codebook_levels_are_the_codes():
    levels, thresholds = codebook(1)
    assert torch.allclose(levels, torch.tensor([-0.6745, 0.6745]), atol=1e-4) and thresholds.item() == 0
    assert torch.allclose(levels[0].abs(), torch.special.ndtri(torch.tensor(0.75)), atol=1e-6)  # Φ⁻¹(0.75)
    levels, thresholds = codebook(2)
    assert torch.allclose(levels, torch.tensor([-1.2657, -0.3778, 0.3778, 1.2657]), atol=1e-4)
    assert torch.allclose(thresholds, torch.tensor([-0.8217, 0.0, 0.8217]), atol=1e-4)
    levels, _ = codebook(4)
    assert len(levels) == 16 and levels[-1] == pytest.approx(2.2655, abs=1e-4) and levels[8] == pytest.approx(0.1056,
                                                                                                              abs=1e-4)


@pytest.mark.parametrize("shape, bits", [((32, 768), 1), ((768, 32), 2), ((5, 7), 4), ((3, 3), 1)])
def test_packing_round_trips_in_the_formulas_bytes(shape, bits):
    index = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(0))
    packed = pack(index, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-index.numel() * bits // 8)
    assert torch.equal(unpack(packed, bits, index.numel()).view(shape), index.to(torch.int32))
    assert storage_bytes(*shape, bits) == packed.numel() + 8
    if shape == (3, 3):  # least significant bits first, row-major: 1,0,1,1 → 0b1101
        small = pack(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0]), 1)
        assert small.tolist() == [0b1101]


def test_the_straight_through_gradient_reaches_mu_and_sigma():
    """∂L/∂W of L = Σ c ⊙ W_q, W_q = σ(q(u) + u − sg(u)) + μ: the closed form with μ and σ in the graph."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, 5, generator=g, dtype=torch.float64)
    quantiser = Quantise(1)
    (c * quantiser(weight)).sum().backward()
    w = weight.detach()
    n, mu, sigma = w.numel(), w.mean(), w.std()
    q = quantiser.levels.double()[quantiser.indices(w)[0]]
    dsigma = (w - mu) / ((n - 1) * sigma)
    du = c / (sigma + 1e-5) - c.sum() / (n * (sigma + 1e-5)) - (c * (w - mu)).sum() / (sigma + 1e-5) ** 2 * dsigma
    expected = sigma * du + (c * q).sum() * dsigma + c.sum() / n
    assert torch.allclose(weight.grad, expected, atol=1e-10)
    detached = c * sigma / (sigma + 1e-5)  # what detaching μ and σ would give
    assert not torch.allclose(weight.grad, detached, atol=1e-3)


@pytest.mark.parametrize("method, hparams, adapter_bytes", [
    ("adaptformer", {"bottleneck": 32, "bias": False}, 73_920),  # 12·2 matrices of 768·32 bits + 24 × (μ, σ)
    ("adaptformer", {"bottleneck": 1, "bias": False}, 2_496),
    ("lora", {"variant": "qv", "rank": 32}, 147_840),  # Bi-LoRA dim 32: 12·4 matrices
])
def test_stored_bytes_are_the_codes_exact_accounting(method, hparams, adapter_bytes):
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100)
    host = create_method(method, **hparams)
    host.attach(model)
    quant = OneBit()
    quant.apply(model, host)
    stored = quant.stored(model, host.state(model))
    adapters = sum(t.numel() * t.element_size() for k, t in stored.items() if not k.startswith("head."))
    assert adapters == adapter_bytes
    assert {k for k in stored if k.startswith("head.")} == {"head.weight", "head.bias"}  # the head stays float32


def test_zero_initialised_matrices_start_with_the_codes_small_spread():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                              num_classes=5)
    host = create_method("adaptformer", bias=False)
    host.attach(model)
    OneBit().apply(model, host)
    up = model.blocks[0].adaptformer.up.parametrizations.weight.original
    assert 0 < up.abs().max() <= 0.002 and up.std() > 0


def test_one_bit_on_vpt_prompts_is_one_line(tmp_path):
    out = run_cli("train.py", "dataset=digits", "backbone=vit_test", "logger=none", "method=vpt", "quant=1bit",
                  f"paths.runs={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "quant=1bit quantises the weight matrices of a method's modules and method 'vpt' inserts none" in out.stderr
