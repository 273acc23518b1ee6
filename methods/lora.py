"""LoRA — Low-Rank Adaptation (Hu et al., ICLR 2022, arXiv 2106.09685), on the attention's qkv Linear.

    qkv(x) = W_qkv x + b + s · B A dropout(x)

Two variants with the same count, 12 · (768·8 + 8·2304) = 294,912 at ViT-B/16, rank 8 (head excluded):
- `variant=qkv` (default): one (A, B) over the fused qkv output, no scaling (s = 1) — NOAH's
  re-implementation behind the VTAB "LoRA (8)" row (`experiments/LoRA/ViT-B_prompt_lora_8.yaml`);
- `variant=qv`: separate (A, B) for the q rows [0, D) and the v rows [2D, 3D), scaled by s — the original
  LoRA set-up used by FacT-style code.

Insertion: every `*.attn.qkv` Linear (timm ViT and Swin blocks). Init `paper` (A Kaiming-uniform, B = 0:
the model starts as the pretrained one) or `noah` (both trunc-normal 0.02, as NOAH's runs really started).
Merge: W_qkv ← W_qkv + s · B A, exact, so the merged model is a plain timm model. The fused variant is also
an HF peft LoRA adapter on `qkv` (`to_peft`; lora_alpha = s · r); peft cannot express q/v row slices.
"""

from __future__ import annotations

import torch
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, backbone_modules, choice, freeze_backbone
from methods.layers import LoRALinear

VARIANTS = ("qkv", "qv")


@register_method
class LoRA(Method):
    """Args:
    rank: r of every B A.
    variant: "qkv" (fused, NOAH) or "qv" (q and v separately).
    scale: s; NOAH's fused variant uses 1.
    dropout: on the LoRA input (NOAH's `--drop_rate_LoRA` default 0.1).
    init: "paper" (B = 0) or "noah" (both trunc-normal 0.02).
    dropout_at: "input" (NOAH, peft) or "hidden" (between A and B: the 1-bit adapters' Bi-LoRA).
    """

    name = "lora"
    prefix = "lora_"

    def __init__(self, rank: int = 8, variant: str = "qkv", scale: float = 1.0, dropout: float = 0.1,
                 init: str = "paper", dropout_at: str = "input"):
        if variant not in VARIANTS:
            raise MethodError(f"method.variant={variant} is not a LoRA variant; choose one of: {', '.join(VARIANTS)}")
        if init not in ("paper", "noah"):
            raise MethodError(f"method.init={init} is not a LoRA init; choose paper or noah")
        if rank < 1:
            raise MethodError(f"method.rank={rank} must be at least 1")
        self.dropout_at = choice("dropout_at", dropout_at, ("input", "hidden"))
        self.rank, self.variant, self.scale, self.dropout, self.init = rank, variant, scale, dropout, init

    @property
    def label(self) -> str:
        return "lora" if self.variant == "qkv" else f"lora_{self.variant}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        targets = [(n, m) for n, m in backbone_modules(model)
                   if n.endswith("attn.qkv") and isinstance(m, nn.Linear)]
        if not targets:
            raise MethodError(f"lora adapts attention qkv Linears and {type(model).__name__} has none")
        for name, qkv in targets:
            width = qkv.out_features // 3
            slices = None if self.variant == "qkv" else [(0, width), (2 * width, 3 * width)]
            model.set_submodule(name, LoRALinear(qkv, self.rank, slices, self.scale, self.dropout, self.init,
                                                 self.dropout_at))

    def to_peft(self, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]] | None:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
        if self.variant != "qkv" or self.dropout_at != "input" or not layers:
            return None
        head = next(n for n, m in model.named_modules() if m is model.get_classifier())
        config = {"r": self.rank, "lora_alpha": self.scale * self.rank, "lora_dropout": self.dropout,
                  "target_modules": ["qkv"], "modules_to_save": [head]}
        tensors = {}
        for name, layer in layers.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[0].weight.detach()
            tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[0].weight.detach()
        for key, value in model.get_classifier().state_dict().items():
            tensors[f"base_model.model.{head}.{key}"] = value
        return config, tensors
