"""Export a finished run as a plain timm model: the method merged into the backbone.

    python scripts/export.py runs/vtab/cifar/ssf/vit_b16_in21k/seed42 [--out DIR]

Writes `<run_dir>/export/` (or `--out`) with timm's own layout — `model.safetensors` and `config.json` — so
`timm.create_model("local-dir:<folder>", pretrained=True)` gives the run's logits, with no vpeft code, for a
method that merges; and, where the method is also an HF peft tuner (fused-qkv LoRA) and peft is installed,
`<out>/peft/`, an adapter folder that `peft.PeftModel.from_pretrained(<the timm backbone>, folder)` loads.
Each method says which of these it can be; one that is neither stops with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.models import save_for_hf

from runners.errors import guard
from runners.job import load_run


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    cfg, model, adaptation = load_run(run_dir)
    method = adaptation.method
    out = Path(out) if out else Path(run_dir) / "export"
    peft = method.to_peft(model) if importlib.util.find_spec("peft") is not None else None
    # without a peft form, merge: a method that cannot says why, in one line
    merged = adaptation.merge(model) if peft is None or adaptation.mergeable(model) else None
    if peft is not None:
        from peft import LoraConfig

        config, tensors = peft
        LoraConfig(**config).save_pretrained(str(out / "peft"))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "peft" / "adapter_model.safetensors"))
    if merged is not None:
        kwargs = OmegaConf.to_container(cfg.backbone.kwargs, resolve=True) or {}
        save_for_hf(merged, str(out), model_args=kwargs, safe_serialization=True,
                    data_config={"input_size": (3, cfg.backbone.image_size, cfg.backbone.image_size),
                                 "interpolation": cfg.pipeline.interpolation, "mean": tuple(cfg.pipeline.mean),
                                 "std": tuple(cfg.pipeline.std), "crop_pct": 1.0, "crop_mode": "squash"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(export(args.run_dir, args.out))


if __name__ == "__main__":
    guard(main)
