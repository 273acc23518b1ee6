"""AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535; official code ShoufaChen/AdaptFormer).

    h = x + DropPath(Attn(LN1 x))
    out = h + DropPath(MLP(LN2 h)) + s · (W_up Dropout(ReLU(W_down h + b_down)) + b_up)

The adapter reads the residual stream h *before* `norm2` (as the official code does, not LN2 h as the
paper's figure suggests), runs parallel to the MLP, outside its drop-path and layer scale; s = 0.1 is a
fixed constant; bottleneck 64; down Kaiming-uniform, up and biases zero, so the model is exactly the
pretrained one at init. ViT-B/16: 12 · (768·64 + 64 + 64·768 + 768) = 1,189,632; the VTAB tables' setting,
bottleneck 8, gives 156,768 (`experiment=adaptformer_vtab`).

Insertion: a forward pre-hook on `blocks.i.norm2` feeds h to the adapter, a forward hook on `blocks.i`
adds its output; the adapter is the submodule `adaptformer` of each block. Not mergeable (non-linear).
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, MethodError, freeze_backbone
from methods.layers import AddCaptured, Bottleneck, CaptureInput, block_width, transformer_blocks


@register_method
class AdaptFormer(Method):
    """Args:
    bottleneck: hidden width (`ffn_num`).
    scale: s (`ffn_adapter_scalar`), fixed.
    dropout: after the ReLU.
    """

    name = "adaptformer"

    def __init__(self, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        self.bottleneck, self.scale, self.dropout = bottleneck, scale, dropout

    def attach(self, model: nn.Module) -> None:
        freeze_backbone(model)
        blocks = transformer_blocks(model)
        if not blocks:
            raise MethodError(f"adaptformer goes into transformer blocks (attn + mlp) and {type(model).__name__} "
                              f"has none")
        for _, block in blocks:
            ref = block.norm2.weight
            block.add_module("adaptformer", Bottleneck(block_width(block), self.bottleneck, "relu", self.dropout,
                                                       self.scale, init="lora", device=ref.device, dtype=ref.dtype))
            block.norm2.register_forward_pre_hook(CaptureInput(block, "adaptformer"))
            block.register_forward_hook(AddCaptured(block, "adaptformer"))
