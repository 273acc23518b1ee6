"""AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535; official code ShoufaChen/AdaptFormer).

    h = x + DropPath(Attn(LN1 x))
    out = h + DropPath(MLP(LN2 h)) + s · (W_up Dropout(ReLU(W_down h + b_down)) + b_up)

The adapter reads the residual stream h *before* `norm2` (as the official code does, not LN2 h as the
paper's figure suggests), runs parallel to the MLP, outside its drop-path and layer scale; s = 0.1 is a
fixed constant; bottleneck 64; down Kaiming-uniform, up and biases zero, so the model is exactly the
pretrained one at init. ViT-B/16: 12 · (768·64 + 64 + 64·768 + 768) = 1,189,632; the VTAB tables' setting,
bottleneck 8, gives 156,768 (`experiment=adaptformer_vtab`).

Insertion: a `ParallelAdapter` wrapping each `blocks.i`, reading the input of its `norm2` and adding the
adapter's output to the block's output; the adapter is its child `adaptformer`. With `head_norm=batchnorm`, the
head is wrapped behind a BatchNorm1d(affine=False) as the official image script. Not mergeable (non-linear).
"""

from __future__ import annotations

import torch
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, choice, freeze_backbone, head_name
from methods.layers import Bottleneck, ParallelAdapter, block_width, transformer_blocks
from methods.tuners import Tuner


class NormedHead(Tuner):
    """The classifier behind a BatchNorm1d without affine parameters (AdaptFormer's image runs)."""

    def __init__(self, head: nn.Linear):
        super().__init__(head)
        self.adaptformer_head_norm = nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6,
                                                    device=head.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.adaptformer_head_norm(x) if self.active else x)


@register_method
class AdaptFormer(Method):
    """Args:
    bottleneck: hidden width (`ffn_num`).
    scale: s (`ffn_adapter_scalar`), fixed.
    dropout: after the ReLU.
    bias: the adapter's Linears have biases (the official code); false for the 1-bit adapters' Bi-AdaptFormer.
    head_norm: "none" or "batchnorm" — the official image script's BatchNorm1d(D, affine=False, eps=1e-6) in front of
        the head (`main_image.py`); the VTAB re-implementations do not use it.
    """

    name = "adaptformer"
    prefix = "adaptformer"

    def __init__(self, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1, bias: bool = True,
                 head_norm: str = "none"):
        if bottleneck < 1:
            raise MethodError(f"method.bottleneck={bottleneck} must be at least 1")
        self.bottleneck, self.scale, self.dropout, self.bias = bottleneck, scale, dropout, bias
        self.head_norm = choice("head_norm", head_norm, ("none", "batchnorm"))

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        blocks = transformer_blocks(model)
        if not blocks:
            raise MethodError(f"adaptformer goes into transformer blocks (attn + mlp) and {type(model).__name__} "
                              f"has none")
        for name, block in blocks:
            ref = block.norm2.weight
            adapter = Bottleneck(block_width(block), self.bottleneck, "relu", self.dropout, self.scale, self.bias,
                                 init="lora", device=ref.device, dtype=ref.dtype)
            model.set_submodule(name, ParallelAdapter(block, adapter, tap="norm2", prefix=self.prefix))
        if self.head_norm == "batchnorm":
            head = head_name(model)
            model.set_submodule(head, NormedHead(model.get_submodule(head)))
