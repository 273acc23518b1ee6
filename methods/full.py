"""Full fine-tuning — the "Full" baseline of VPT (Jia et al., ECCV 2022, arXiv 2203.12119).

Every backbone parameter and the new head train (ViT-B/16: 85,798,656 + 769·C). Nothing is inserted,
so the tuned model is already a plain timm model.
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method


@register_method
class Full(Method):
    name = "full"
    prefix = "full_"  # inserts nothing

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
