"""Hub weights without a network: from the local Hugging Face cache if there, else one line at once, no retries."""

from __future__ import annotations

import time

import timm
from safetensors.torch import save_file

from tests.conftest import run_cli

CLOSED_PORT = "http://127.0.0.1:9"  # refuses at once: the hub unreachable, without waiting on a timeout


def _env(tmp_path, monkeypatch) -> dict:
    """HF_HUB_OFFLINE unset, so only the closed endpoint stands between the run and the hub."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    return {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": CLOSED_PORT}


def test_unreachable_hub_fails_at_once_with_one_line(tmp_path, monkeypatch):
    start = time.monotonic()
    out = run_cli("train.py", "backbone=vit_b16_in21k", "logger=none", f"paths.runs={tmp_path}", cwd=tmp_path,
                  env=_env(tmp_path, monkeypatch))
    assert time.monotonic() - start < 15
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "backbone.checkpoint=" in lines[0], out.stderr
    assert "Retry" not in out.stdout


def test_cached_hub_weights_load_without_the_hub(tmp_path, monkeypatch):
    arch = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)  # conf/backbone/vit_test.yaml
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # its hf_hub_id
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = timm.create_model("vit_tiny_patch16_224", **arch).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / commit / "model.safetensors")

    out = run_cli("train.py", "backbone=vit_test", "backbone.pretrained=true", "logger=none", "dataset=digits",
                  "epochs=1", "scheduler.warmup_epochs=0", f"paths.runs={tmp_path / 'runs'}", cwd=tmp_path,
                  env=_env(tmp_path, monkeypatch))
    assert out.returncode == 0, out.stderr
    assert "Loading pretrained weights from Hugging Face hub" in out.stdout
    assert out.stderr.strip() == ""
