"""Every registered method: 2 epochs on digits with the tiny ViT, complete metrics, hand-computed counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from methods import create_method, list_methods
from runners.config import CONF_DIR

# vit_test: width D=64, 4 blocks, MLP 256, 8×8 patches on 32² (16 tokens + CLS), 10 classes.
D, L, MLP, C, TOKENS = 64, 4, 256, 10, 17
BLOCK_LINEAR = (D * 3 * D + 3 * D) + (D * D + D) + (D * MLP + MLP) + (MLP * D + D)  # qkv, proj, fc1, fc2
BLOCK_NORMS = 2 * 2 * D
PATCH = 3 * 8 * 8 * D + D
BACKBONE = L * (BLOCK_LINEAR + BLOCK_NORMS) + PATCH + D + TOKENS * D + 2 * D  # + cls, pos_embed, final norm
HEAD = D * C + C
BIASES = L * (3 * D + D + MLP + D + 2 * D) + D + D  # qkv, proj, fc1, fc2, norm1/2 + patch, final norm
SSF = L * 2 * (D + 3 * D + D + D + MLP + D) + 2 * D + 2 * D  # 6 per block + patch embed + final norm
VPT_DEEP_10 = L * 10 * D  # one 10-token prompt set per block
LORA_8 = L * (D * 8 + 8 * 3 * D)  # A: 8×D, B: 3D×8 on the fused qkv
ADAPTER_8 = L * (D * 8 + 8 + 8 * D + D)  # down and up with biases, one per block
ADAPTFORMER_64 = L * (D * 64 + 64 + 64 * D + D)

EXPECTED = {  # trainable without head, total parameters of the tuned model
    "full": (BACKBONE, BACKBONE + HEAD),
    "linear": (0, BACKBONE + HEAD),
    "bitfit": (BIASES, BACKBONE + HEAD),
    "ssf": (SSF, BACKBONE + HEAD + SSF),
    "vpt": (VPT_DEEP_10, BACKBONE + HEAD + VPT_DEEP_10),
    "lora": (LORA_8, BACKBONE + HEAD + LORA_8),
    "adapter": (ADAPTER_8, BACKBONE + HEAD + ADAPTER_8),
    "adaptformer": (ADAPTFORMER_64, BACKBONE + HEAD + ADAPTFORMER_64),
}

FIELDS = {"task", "benchmark", "group", "method", "backbone", "seed", "protocol", "top1", "params", "stored_bytes",
          "gmacs_per_image", "peak_memory_mib", "train_images_per_s", "wall_seconds", "provenance"}
PROVENANCE = {"data_format", "normalisation", "interpolation", "selection", "weights", "config_hash", "git_commit",
              "versions", "train_split", "eval_split"}


def test_every_method_has_a_config_and_an_expected_count():
    configs = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert configs == set(list_methods())
    assert set(EXPECTED) == set(list_methods())


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: adapter, adaptformer, bitfit, full, linear, lora, ssf, vpt"):
        create_method("sft")


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_two_epochs_on_digits(method, tiny_cfg):
    from runners import run

    cfg = tiny_cfg(f"method={method}")
    metrics = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    label = {"vpt": "vpt_deep"}.get(method, method)
    assert metrics["method_label"] == label
    assert run_dir.parts[-5:] == ("digits", "digits", label, "vit_test", "seed42")
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["top1"] == metrics["top1"]
    assert FIELDS <= on_disk.keys() and PROVENANCE <= on_disk["provenance"].keys()
    assert on_disk["protocol"] == "final" and on_disk["provenance"]["eval_split"] == "test"
    assert on_disk["provenance"]["train_images"] == 1000 and on_disk["provenance"]["eval_images"] == 797
    assert 0.0 <= on_disk["top1"] <= 100.0

    without_head, total = EXPECTED[method]
    assert on_disk["params"] == {"trainable_without_head": without_head,
                                 "trainable_with_head": without_head + HEAD, "total": total}
    stored = load_file(run_dir / "trainable.safetensors")
    assert sum(t.numel() for t in stored.values()) == without_head + HEAD
    assert on_disk["stored_bytes"] == (run_dir / "trainable.safetensors").stat().st_size
    assert not (run_dir / "checkpoint.pt").exists()
    assert on_disk["gmacs_per_image"] > 0 and on_disk["train_images_per_s"] > 0
