"""BitFit / bias tuning (Ben Zaken et al., ACL 2022, arXiv 2106.10199; VPT's `tinytl-bias` baseline).

Only the bias terms of the backbone train, with the new head: every parameter registered as a layer's
`bias` — Linear, Conv2d and LayerNorm biases, the patch embedding's and the final norm's included.
ViT-B/16: 12 · 8,448 + 768 + 768 = 102,912 without the head. Parameters that merely contain "bias" in
their name (Swin's relative position bias table) are not bias terms and stay frozen.
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, freeze_backbone


@register_method
class BitFit(Method):
    name = "bitfit"
    prefix = "bitfit_"  # inserts nothing

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                p.requires_grad_(True)
