"""Exact parameter counts and compute at ViT-B/16 (built on the meta device: no weights needed)."""

from __future__ import annotations

import pytest
import timm
import torch

from methods import create_method
from runners.report import count_params, gmacs_per_image
from tests.conftest import run_cli

VIT_B16_BACKBONE = 85_798_656  # reference §0.1
HEAD_100 = 769 * 100


def vit_b16(method: str):
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=100)
        create_method(method).attach(model)
    return model


@pytest.mark.parametrize("method, without_head", [
    ("full", VIT_B16_BACKBONE),
    ("linear", 0),
    ("bitfit", 102_912),  # all biases: 12 · 8,448 + patch embed 768 + final norm 768 (reference §3)
    ("ssf", 205_824),
])
def test_vit_b16_counts(method, without_head):
    counts = count_params(vit_b16(method))
    assert counts.trainable_without_head == without_head
    assert counts.trainable_with_head == without_head + HEAD_100
    added = 205_824 if method == "ssf" else 0
    assert counts.total == VIT_B16_BACKBONE + HEAD_100 + added


def test_bitfit_with_the_mean_vtab_head_is_the_published_014m():
    assert round((102_912 + 38_045) / 1e6, 2) == 0.14


def test_vit_b16_gmacs_in_the_papers_convention():
    # fvcore counts ViT-B/16 at 17.58 G; FlopCounterMode's matmul count halves to 17.56 G
    assert gmacs_per_image(vit_b16("linear"), 224, "meta") == pytest.approx(17.56, abs=0.01)


def test_count_params_script_needs_no_weights(tmp_path):
    out = run_cli("scripts/count_params.py", "method=ssf", "backbone=vit_b16_in21k", "dataset=digits",
                  "dataset.num_classes=100", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ") for line in out.stdout.strip().splitlines())
    assert lines["trainable_without_head"] == "205824"
    assert lines["trainable_with_head"] == str(205_824 + HEAD_100)
    assert lines["total"] == str(VIT_B16_BACKBONE + HEAD_100 + 205_824)
    assert float(lines["gmacs_per_image"]) == pytest.approx(17.56, abs=0.01)
