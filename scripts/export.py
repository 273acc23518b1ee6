"""Export a finished run as a plain timm model: the method merged into the backbone.

    python scripts/export.py runs/vtab/cifar/ssf/vit_b16_in21k/seed42 [--out DIR]

Writes `<run_dir>/export/` (or `--out`) with timm's own layout — `model.safetensors` and `config.json` — so
`timm.create_model("local-dir:<folder>", pretrained=True)` gives the run's logits, with no vpeft code.
For mergeable methods only (SSF, LoRA, BitFit, full, linear); others say so: their task checkpoint is
`trainable.safetensors`, used with vpeft. For `lora` (fused qkv) with HF peft installed, also `<out>/peft/`:
an adapter folder that `peft.PeftModel.from_pretrained(<the timm backbone>, folder)` loads.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.models import save_for_hf
from torch import nn

from methods.layers import LoRALinear
from runners.errors import UserError, guard
from runners.run import load_run


def peft_adapter(model: nn.Module, folder: Path) -> None:
    """The LoRA layers and the head of `model` as an HF peft LoRA adapter (lora_alpha = scale · r)."""
    from peft import LoraConfig

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if any(m.slices != [(0, m.base.out_features)] for m in layers.values()):
        raise UserError("peft adapts whole Linears; this LoRA adapts slices of qkv (variant=qv), which peft cannot "
                        "express — use the merged export")
    first = next(iter(layers.values()))
    rank = first.lora_A[0].shape[0]
    head = next(n for n, m in model.named_modules() if m is model.get_classifier())
    LoraConfig(r=rank, lora_alpha=first.scale * rank, lora_dropout=first.dropout.p, target_modules=["qkv"],
               modules_to_save=[head]).save_pretrained(str(folder))
    tensors = {}
    for name, layer in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[0].detach().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[0].detach().contiguous()
    for key, value in model.get_classifier().state_dict().items():
        tensors[f"base_model.model.{head}.{key}"] = value.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    cfg, model, method = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "export"
    if importlib.util.find_spec("peft") is not None and any(isinstance(m, LoRALinear) for m in model.modules()):
        peft_adapter(model, out / "peft")
    merged = method.merge(model)
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
