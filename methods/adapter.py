"""Bottleneck adapters (Houlsby et al., ICML 2019, arXiv 1902.00751; Pfeiffer et al., EACL 2021,
arXiv 2005.00247), as the VTAB "Adapter (8)" row ran them (NOAH's re-implementation).

    h = MLP(LN2 x);   h ← h + W_up · Dropout(QuickGELU(W_down h));   x ← x + h

Default (`placement=pfeiffer`): one adapter per block on the MLP output, inside the residual branch,
bottleneck 8, QuickGELU, dropout 0.1, biases — 12 · 13,064 = 156,768 at ViT-B/16 (the published "0.16M",
head excluded). `placement=houlsby` adds a second one on the attention output (313,536).
Init: `xavier` (NOAH's module: Xavier-uniform weights, biases N(0, 1e-6) — not an identity),
`noah` (trunc-normal 0.02, what NOAH's model re-initialises them to before training) or `zero`.
VPT's adapter baseline is this placement with `act=gelu dropout=0 init=zero bottleneck=768/r`; with all
tensors zero only the up bias ever receives a gradient, as in VPT's code.

Insertion: a forward hook on `blocks.i.mlp` (and `blocks.i.attn`) of every transformer block (ViT, Swin);
the adapters are submodules `adapter_mlp` / `adapter_attn` of the block. Not mergeable (non-linear).
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, MethodError, freeze_backbone
from methods.layers import (
    ACTIVATIONS,
    BOTTLENECK_INITS,
    AddAdapterOutput,
    Bottleneck,
    block_width,
    transformer_blocks,
)

PLACEMENTS = {"pfeiffer": ("mlp",), "houlsby": ("attn", "mlp")}


@register_method
class Adapter(Method):
    """Args:
    bottleneck: the adapter's hidden width.
    placement: "pfeiffer" (after the MLP) or "houlsby" (after the attention and after the MLP).
    act: quick_gelu | gelu | relu.
    dropout: inside the adapter, after the activation.
    init: xavier | noah | zero | lora.
    """

    name = "adapter"

    def __init__(self, bottleneck: int = 8, placement: str = "pfeiffer", act: str = "quick_gelu",
                 dropout: float = 0.1, init: str = "xavier"):
        if placement not in PLACEMENTS:
            raise MethodError(f"method.placement={placement} is unknown; choose one of: {', '.join(PLACEMENTS)}")
        if act not in ACTIVATIONS:
            raise MethodError(f"method.act={act} is unknown; choose one of: {', '.join(ACTIVATIONS)}")
        if init not in BOTTLENECK_INITS:
            raise MethodError(f"method.init={init} is unknown; choose one of: {', '.join(BOTTLENECK_INITS)}")
        self.bottleneck, self.placement, self.act, self.dropout, self.init = bottleneck, placement, act, dropout, init

    @property
    def label(self) -> str:
        return "adapter" if self.placement == "pfeiffer" else f"adapter_{self.placement}"

    def attach(self, model: nn.Module) -> None:
        freeze_backbone(model)
        blocks = transformer_blocks(model)
        if not blocks:
            raise MethodError(f"adapter goes into transformer blocks (attn + mlp) and {type(model).__name__} has none")
        for _, block in blocks:
            ref = block.norm2.weight
            for site in PLACEMENTS[self.placement]:
                attr = f"adapter_{site}"
                block.add_module(attr, Bottleneck(block_width(block), self.bottleneck, self.act, self.dropout,
                                                  init=self.init, device=ref.device, dtype=ref.dtype))
                getattr(block, site).register_forward_hook(AddAdapterOutput(block, attr))
