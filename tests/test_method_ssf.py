"""SSF: exact counts at ViT-B/16, its insertion points, its init, and the fold on every layer type."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

from methods import create_method
from methods.layers import ScaleShift, fold_scale_shift
from runners.report import count_params
from tests.method_table import MLP, Case, D, L

SSF = L * 2 * (D + 3 * D + D + D + MLP + D) + 2 * D + 2 * D  # 6 per block + patch embed + final norm
CASES = [
    Case(("method=ssf",), vit_b16=205_824, tiny=SSF, merges=True, backbones={"swin": "", "convnext": ""}),
]


def tiny_vit(num_classes: int = 10) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                             num_heads=4, num_classes=num_classes)


def perturb_(model: nn.Module, generator: torch.Generator) -> None:
    """SSF's init is close to identity; move γ and β far from it so the merge test means something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ssf_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if "scale" in name else 0.0))


def test_vit_b16_count_matches_the_paper_arithmetic():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=100)
        create_method("ssf").attach(model)
    counts = count_params(model)
    # 12 blocks × 2·(768 + 2304 + 768 + 768 + 3072 + 768) + patch embed 1,536 + final norm 1,536 (reference §8)
    assert counts.trainable_without_head == 205_824
    assert counts.trainable_with_head == 205_824 + 769 * 100
    # with the mean VTAB head (38,045): the paper's "0.24M"
    assert round((205_824 + 38_045) / 1e6, 2) == 0.24


def test_insertion_points_are_the_papers():
    model = tiny_vit()
    create_method("ssf").attach(model)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, ScaleShift)}
    per_block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    expected = {f"blocks.{i}.{p}" for i in range(2) for p in per_block} | {"patch_embed.proj", "norm"}
    assert wrapped == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.ssf_{k}" for n in expected for k in ("scale", "shift")} | {"head.weight", "head.bias"}


def test_init_is_n1_and_n0_with_std_002():
    torch.manual_seed(0)
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=10)
    model = model.to_empty(device="cpu")
    create_method("ssf").attach(model)
    scales = torch.cat([m.ssf_scale.detach() for m in model.modules() if isinstance(m, ScaleShift)])
    shifts = torch.cat([m.ssf_shift.detach() for m in model.modules() if isinstance(m, ScaleShift)])
    assert scales.numel() == shifts.numel() == 102_912
    assert abs(scales.mean().item() - 1.0) < 1e-3 and abs(scales.std().item() - 0.02) < 1e-3
    assert abs(shifts.mean().item()) < 1e-3 and abs(shifts.std().item() - 0.02) < 1e-3


def test_merged_model_has_no_ssf_tensor_left_and_differs_from_the_backbone():
    torch.manual_seed(0)
    model = tiny_vit()
    method = create_method("ssf")
    method.attach(model)
    perturb_(model, torch.Generator().manual_seed(1))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
        merged = method.merge(copy.deepcopy(model))
    assert not any(isinstance(m, ScaleShift) for m in merged.modules())
    assert not any("ssf" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert (before - tiny_vit().eval()(x)).abs().max().item() > 1e-2  # the perturbed SSF really changes it


@pytest.mark.parametrize("layer, x", [
    (nn.Conv2d(3, 5, 3, bias=False), torch.randn(2, 3, 6, 6)),
    (LayerNorm2d(5), torch.randn(2, 5, 4, 4)),
    (nn.LayerNorm(5), torch.randn(2, 7, 5)),
    (nn.Linear(4, 5), torch.randn(2, 3, 4)),
])
def test_fold_matches_scale_shift_on_every_layer_type(layer, x):
    wrapped = ScaleShift(layer)
    with torch.no_grad():
        wrapped.ssf_scale.copy_(torch.randn(5))
        wrapped.ssf_shift.copy_(torch.randn(5))
        expected = wrapped(x)
        folded = fold_scale_shift(copy.deepcopy(layer), wrapped.ssf_scale, wrapped.ssf_shift)
        assert torch.allclose(folded(x), expected, atol=1e-5)
