"""Export: a finished run merged into a plain timm model that timm loads by itself, with the run's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from runners import run
from runners.job import load_run
from scripts.export import export
from tests.conftest import run_cli

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["ssf", "lora", "bitfit", "full", "linear"])
def test_export_loads_in_plain_timm_with_the_runs_logits(method, tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"method={method}", "epochs=1", "optimizer.lr=0.05")
    run(cfg)
    _, model, _ = load_run(cfg.paths.run_dir)
    with torch.no_grad():
        expected = model(X)
    folder = export(cfg.paths.run_dir, tmp_path / "export")
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert not any("ssf" in n or "lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        assert (plain(X) - expected).abs().max().item() < 1e-5
    fresh = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4,
                              num_heads=4, num_classes=10).eval()
    with torch.no_grad():
        assert (fresh(X) - expected).abs().max().item() > 1e-3  # the export carries the trained weights


def test_lora_export_is_also_an_hf_peft_adapter(tiny_cfg, tmp_path):
    peft = pytest.importorskip("peft")
    from runners.backbone import build_backbone
    from runners.trainer import seed_everything

    cfg = tiny_cfg("method=lora", "epochs=1", "optimizer.lr=0.05")
    run(cfg)
    _, model, _ = load_run(cfg.paths.run_dir)
    with torch.no_grad():
        expected = model(X)
    folder = export(cfg.paths.run_dir, tmp_path / "export") / "peft"
    seed_everything(cfg.seed, deterministic=False)  # the run's backbone, before any adaptation
    base = build_backbone(cfg.backbone, 10)
    adapted = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        assert (adapted(X) - expected).abs().max().item() < 1e-5


def test_unmergeable_method_says_so_in_one_line(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=adapter", "epochs=1")
    run(cfg)
    out = run_cli("scripts/export.py", cfg.paths.run_dir, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: method 'adapter' has no re-parameterised (merged) form"
    assert not (Path(cfg.paths.run_dir) / "export").exists()


def test_export_of_an_unfinished_run_is_refused(tmp_path):
    out = run_cli("scripts/export.py", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "is not a finished run (no config.yaml)" in out.stderr
