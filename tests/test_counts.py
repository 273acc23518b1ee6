"""Compute as deployed: GMACs in the papers' convention, averaged honestly over real images; the count script."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from methods import create_method
from methods.tuners import Tuner
from runners.report import gmacs_at_size, gmacs_per_image
from tests.conftest import run_cli

VIT_B16_BACKBONE = 85_798_656  # reference §0.1
HEAD_100 = 769 * 100


def vit_b16(method: str):
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=100)
        create_method(method).attach(model)
    return model


def test_vit_b16_gmacs_in_the_papers_convention():
    # fvcore counts ViT-B/16 at 17.58 G; FlopCounterMode's matmul count halves to 17.56 G
    assert gmacs_at_size(vit_b16("linear"), 224, "meta") == pytest.approx(17.56, abs=0.01)


def test_attention_is_counted_on_real_cpu_tensors_too():
    """On the CPU, SDPA runs a flash kernel FlopCounterMode does not know by itself: it must still count."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100).eval()
    measured, _ = gmacs_per_image(model, [torch.randn(1, 3, 224, 224)])
    assert measured == pytest.approx(gmacs_at_size(vit_b16("linear"), 224, "meta"), rel=1e-6)


class SkipOddImages(Tuner):
    """A toy data-dependent method: the wrapped block runs only on the even-numbered images of a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(len(x)) % 2 == 0
        out = x.clone()
        out[keep] = self.base(x[keep])
        return out


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                             num_classes=10).eval()


def test_per_image_compute_is_averaged_exactly():
    """Half of the blocks skipped for half of the images: the mean per image is the full count minus one block."""
    model = tiny_vit()
    full = gmacs_at_size(model, 32, "cpu")
    block = gmacs_per_image(model.blocks[0], [torch.zeros(1, 17, 64)])[0]
    for i in (2, 3):
        model.blocks[i] = SkipOddImages(model.blocks[i])
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gmacs, counted = gmacs_per_image(model, [images[:4], images[4:]])
    assert counted == 8
    assert gmacs == pytest.approx(full - 2 * block / 2, rel=1e-9)
    assert gmacs < full


def test_count_params_script_needs_no_weights(tmp_path):
    out = run_cli("scripts/count_params.py", "method=ssf", "backbone=vit_b16_in21k", "dataset=digits",
                  "dataset.num_classes=100", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ") for line in out.stdout.strip().splitlines())
    assert lines["trainable_without_head"] == "205824"
    assert lines["trainable_with_head"] == str(205_824 + HEAD_100)
    assert lines["total"] == str(VIT_B16_BACKBONE + HEAD_100 + 205_824)
    assert float(lines["gmacs_per_image"]) == pytest.approx(17.56, abs=0.01)  # merged: SSF costs nothing


def test_count_params_builds_data_dependent_methods_at_their_nominal_size(tmp_path):
    out = run_cli("scripts/count_params.py", "method=sct", "backbone=vit_b16_in21k", "dataset=digits", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trainable_without_head: 111744" in out.stdout  # 12 · (96² + 96), whatever channels the data picks
    out = run_cli("scripts/count_params.py", "method=spt", "method.budget=0.4", "backbone=vit_b16_in21k",
                  "dataset=digits", cwd=tmp_path)
    assert "allocated_from_data: true" in out.stdout and "budget_m: 0.4" in out.stdout
