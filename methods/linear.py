"""Linear probing — the "Linear" baseline of VPT (Jia et al., ECCV 2022, arXiv 2203.12119).

The backbone is frozen; only the new head, Linear(D → C) on the final-norm CLS token, trains
(769·C parameters at ViT-B/16).
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, freeze_backbone


@register_method
class Linear(Method):
    name = "linear"
    prefix = "linear_"  # inserts nothing

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
