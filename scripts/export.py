"""Export a finished run as a plain timm model: the method merged into the backbone.

    python scripts/export.py runs/vtab/cifar/ssf/vit_b16_in21k/seed42 [--out DIR]

Writes `<run_dir>/export/` (or `--out`) with timm's own layout — `model.safetensors` and `config.json` — so
`timm.create_model("local-dir:<folder>", pretrained=True)` gives the run's logits, with no vpeft code.
For mergeable methods only (SSF, LoRA, BitFit, full, linear); others say so: their task checkpoint is
`trainable.safetensors`, used with vpeft.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf
from timm.models import save_for_hf

from runners.errors import guard
from runners.run import load_run


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    cfg, model, method = load_run(run_dir)
    merged = method.merge(model)
    out = Path(out) if out else Path(run_dir) / "export"
    kwargs = OmegaConf.to_container(cfg.backbone.kwargs, resolve=True) or {}
    save_for_hf(merged, str(out), model_args=kwargs, safe_serialization=True,
                data_config={"input_size": (3, cfg.backbone.image_size, cfg.backbone.image_size),
                             "interpolation": cfg.backbone.interpolation, "mean": tuple(cfg.backbone.mean),
                             "std": tuple(cfg.backbone.std), "crop_pct": 1.0, "crop_mode": "squash"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(export(args.run_dir, args.out))


if __name__ == "__main__":
    guard(main)
