"""SSF — Scaling & Shifting Your Features (Lian et al., NeurIPS 2022, arXiv 2210.08823).

After each selected operation a per-channel affine map is applied to its output:

    y = γ ⊙ x + β,   γ, β ∈ R^C,  C the operation's output width,

broadcast over batch and tokens (or H, W). All pretrained weights are frozen; γ, β and the new head train.

Insertion points (dongzelian/SSF `models/vision_transformer.py`), in timm names for a ViT:
`blocks.i.norm1`, `blocks.i.attn.qkv` (before the q/k/v split), `blocks.i.attn.proj`, `blocks.i.norm2`,
`blocks.i.mlp.fc1` (before GELU), `blocks.i.mlp.fc2`, `patch_embed.proj` (before the CLS concat and
pos-embed) and the final `norm`. Here: after every Linear, Conv2d and affine LayerNorm of the backbone,
the classifier excluded — exactly that list for a timm ViT (ViT-B/16: 205,824 parameters).

`placement=reduced` is the SSF host of VeLoRA's experiments: γ, β after qkv, proj, fc1 and fc2 only (no norms,
patch embedding or final norm; 12·2·(2304 + 768 + 3072 + 768) = 165,888 at ViT-B/16).

Init: γ ~ N(1, 0.02), β ~ N(0, 0.02). Merge: every SSF follows a layer that is affine in its output
channels, so it folds into it (W' = diag(γ)W, b' = γ ⊙ b + β; LayerNorm w' = γ ⊙ w) and the merged model
is a plain timm model with the original architecture.
"""

from __future__ import annotations

from torch import nn

from methods import register_method
from methods.base import Method, MethodError, backbone_modules, choice, freeze_backbone
from methods.layers import ScaleShift, output_channel_dim

REDUCED = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@register_method
class SSF(Method):
    """Args:
    init_std: standard deviation of the N(1, ·) scale and N(0, ·) shift init.
    placement: "all" (the paper) or "reduced" (after qkv, proj, fc1, fc2: VeLoRA's SSF host).
    """

    name = "ssf"
    prefix = "ssf_"

    def __init__(self, init_std: float = 0.02, placement: str = "all"):
        self.init_std = init_std
        self.placement = choice("placement", placement, ("all", "reduced"))

    @property
    def label(self) -> str:
        return "ssf" if self.placement == "all" else f"ssf_{self.placement}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        targets = [n for n, m in backbone_modules(model) if output_channel_dim(m) is not None
                   and (self.placement == "all" or n.endswith(REDUCED))]
        if not targets:
            raise MethodError(f"ssf found no Linear, Conv2d or LayerNorm to follow in {type(model).__name__}")
        for name in targets:
            model.set_submodule(name, ScaleShift(model.get_submodule(name), self.init_std))
