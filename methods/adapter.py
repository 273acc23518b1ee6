"""Bottleneck adapters (Houlsby et al., ICML 2019, arXiv 1902.00751; Pfeiffer et al., EACL 2021,
arXiv 2005.00247), as the VTAB "Adapter (8)" row ran them (NOAH's re-implementation).

    h = DropPath(MLP(LN2 x));   h ← h + W_up · Dropout(QuickGELU(W_down h));   x ← x + h

Default (`placement=pfeiffer`): one adapter per block on the MLP branch, bottleneck 8, QuickGELU, dropout 0.1,
biases — 12 · 13,064 = 156,768 at ViT-B/16 (the published "0.16M", head excluded). `placement=houlsby` adds a
second one on the attention branch (313,536).

Where in the branch (`order`): NOAH's block applies the adapter to the branch *after* its drop-path
(`after_drop_path`, the default): under stochastic depth the adapter is not dropped with the MLP and reads the
dropped branch. `before_drop_path` puts it on the MLP output inside the drop-path (the adapter is dropped with
the MLP), as in a Pfeiffer block drawn without stochastic depth. Both are the same function at evaluation.

Init: `xavier` (NOAH's module: Xavier-uniform weights, biases N(0, 1e-6) — not an identity), `noah`
(trunc-normal 0.02, what NOAH's model re-initialises them to before training) or `zero`. VPT's adapter baseline is
this placement with `act=gelu dropout=0 init=zero bottleneck=768/r`; with all tensors zero only the up bias ever
receives a gradient, as in VPT's code.

Insertion: a `SequentialAdapter` wrapping `blocks.i.drop_path2` (`drop_path1` for the attention adapter), or
`blocks.i.mlp` / `blocks.i.attn` with `order=before_drop_path`, in every transformer block (ViT, Swin); the
adapter is its child `adapter`. Not mergeable (non-linear).
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, MethodError, choice, freeze_backbone
from methods.layers import ACTIVATIONS, BOTTLENECK_INITS, Bottleneck, SequentialAdapter, block_width, transformer_blocks

PLACEMENTS = {"pfeiffer": ("mlp",), "houlsby": ("attn", "mlp")}
ORDERS = {"after_drop_path": {"attn": "drop_path1", "mlp": "drop_path2"},
          "before_drop_path": {"attn": "attn", "mlp": "mlp"}}


@register_method
class Adapter(Method):
    """Args:
    bottleneck: the adapter's hidden width.
    placement: "pfeiffer" (on the MLP branch) or "houlsby" (on the attention branch and on the MLP branch).
    order: "after_drop_path" (NOAH) or "before_drop_path": where in the branch the adapter sits.
    act: quick_gelu | gelu | relu.
    dropout: inside the adapter, after the activation.
    init: xavier | noah | zero | lora.
    """

    name = "adapter"
    prefix = "adapter"

    def __init__(self, bottleneck: int = 8, placement: str = "pfeiffer", order: str = "after_drop_path",
                 act: str = "quick_gelu", dropout: float = 0.1, init: str = "xavier"):
        self.placement = choice("placement", placement, PLACEMENTS)
        self.order = choice("order", order, ORDERS)
        self.act = choice("act", act, ACTIVATIONS)
        self.init = choice("init", init, BOTTLENECK_INITS)
        if bottleneck < 1:
            raise MethodError(f"method.bottleneck={bottleneck} must be at least 1")
        self.bottleneck, self.dropout = bottleneck, dropout

    @property
    def label(self) -> str:
        return "adapter" if self.placement == "pfeiffer" else f"adapter_{self.placement}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        blocks = transformer_blocks(model)
        if not blocks:
            raise MethodError(f"adapter goes into transformer blocks (attn + mlp) and {type(model).__name__} has none")
        for name, block in blocks:
            ref = block.norm2.weight
            for site in PLACEMENTS[self.placement]:
                target = f"{name}.{ORDERS[self.order][site]}"
                adapter = Bottleneck(block_width(block), self.bottleneck, self.act, self.dropout, init=self.init,
                                     device=ref.device, dtype=ref.dtype)
                model.set_submodule(target, SequentialAdapter(model.get_submodule(target), adapter, self.prefix))
