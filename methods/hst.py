"""HST — Hierarchical Side-Tuning (arXiv 2310.05393; official code AFeng-x/HST, `models/vit_hsn.py`).

The frozen ViT runs with one learnable meta token per layer, m_l ∈ R^{1×D}, prepended before block l
([m_l, CLS, patches]) and dropped after it; block l's meta output m̂_l and patch features F_l feed a 4-stage
hierarchical side network (HSN) on the raw image, which alone predicts:

| stage | input | map (224²) | width | heads | side blocks | ViT layers |
|---|---|---|---|---|---|---|
| 1 | stem: Conv3×3 s2 (no bias), BN, ReLU, Conv2×2 s2, LN | 56² | 32 | 2 | L/4 | 0 … 2 |
| 2 | Conv3×3 s2 p1 + LN | 28² | 48 | 4 | L/4 | 3 … 5 |
| 3 | Conv3×3 s2 p1 + LN | 14² | 64 | 8 | L/4 | 6 … 8 |
| 4 | Conv3×3 s2 p1 + LN | 7² | 72 | 12 | L/4 | 9 … 11 |

Transformation bridge of stage s: one Linear T_s (D → d_s), shared by the meta tokens and the feature maps.
M_l = LN_l(T_s m̂_l) (one LayerNorm per ViT layer); G_l = resize(T_s F_l) to the stage's map — projected *before*
resizing: exact (T_s is affine per position and bilinear weights sum to 1; the code resizes the 768-channel map
first, at ~10× the memory); g_l = mean of G_l. Side block of layer l (queries from the side tokens z):

    z ← z + DropPath(CrossAttn(LN(z), KV = [M_l; g_l]));   z ← z + G_l;   z ← z + DropPath(MLP(LN(z)))

(the same DropPath for both branches, q/k/v/proj with biases, MLP ratio 4, GELU), a LayerNorm after each stage,
then mean pooling of the 7² stage-4 tokens, BatchNorm1d(72, affine=False) and the head Linear(72 → C). The ViT's
CLS output, final norm and head are unused.

As the code: LayerNorm epsilons 1e-5 for the stem, downsampling and per-layer meta LNs, 1e-6 for side blocks,
stage LNs and the head BN (the stem BN 1e-5); the ViT's block LayerNorms train with the side network (36,864 at
ViT-B); drop-path runs in the frozen ViT (`drop_path=`) and linearly over the side blocks to the same rate. Init:
meta tokens Xavier-uniform, side Linears trunc-normal 0.02 (bias 0), convs N(0, √(2/fan_out)), norms 1/0.

Count at ViT-B/16: 764,840 without the head (73·C more with it). Insertion: `MetaToken` wraps each `blocks.i`;
the adapted model is `SideTuned`, a tuner around the ViT (its `get_classifier` is the side head), which reads the
patch features through timm's `forward_intermediates` and the meta outputs through per-call taps. Not mergeable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, freeze_backbone
from methods.layers import unwrapped, vit_blocks
from methods.tuners import Tuner


class MetaToken(Tuner):
    """Block l with its meta token: [m_l; x] in, the meta position dropped from the output."""

    def __init__(self, block: nn.Module, dim: int, like: torch.Tensor):
        super().__init__(block)
        self.hst_meta = nn.Parameter(torch.empty(1, 1, dim, device=like.device, dtype=like.dtype))
        nn.init.xavier_uniform_(self.hst_meta)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if not self.active:
            return self.base(x, **kwargs)
        return self.base(torch.cat([self.hst_meta.expand(x.shape[0], -1, -1), x], dim=1), **kwargs)[:, 1:]


class CrossAttention(nn.Module):
    """Queries from the side tokens, keys and values from the 2 injected tokens [M_l; g_l]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, z: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, N, C = z.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(z)), split(self.k(kv)), split(self.v(kv)))
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class SideBlock(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, z: torch.Tensor, kv: torch.Tensor, injected: torch.Tensor) -> torch.Tensor:
        z = z + self.drop_path(self.attn(self.norm1(z), kv))
        z = z + injected
        return z + self.drop_path(self.mlp(self.norm2(z)))


class TokensNorm(nn.Module):
    """A conv stage entry: conv → tokens (B × HW × C) → LayerNorm; also returns the map's size."""

    def __init__(self, conv: nn.Module, dim: int, eps: float = 1e-5):
        super().__init__()
        self.conv, self.norm = conv, nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(x)
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[-2:])


class SideTuned(Tuner):
    """The ViT (`base`) with its hierarchical side network; the side network's head is the classifier."""

    def __init__(self, vit: nn.Module, num_classes: int, widths: list[int], heads: list[int], drop_path: float):
        super().__init__(vit)
        layers, dim = len(vit.blocks), vit.embed_dim
        self.per_stage = layers // len(widths)
        self.hst_stem = TokensNorm(nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], widths[0], 2, 2)), widths[0])
        self.hst_down = nn.ModuleList(TokensNorm(nn.Conv2d(a, b, 3, 2, 1), b)
                                      for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.hst_bridges = nn.ModuleList(nn.Linear(dim, w) for w in widths)
        self.hst_meta_norms = nn.ModuleList(nn.LayerNorm(widths[i // self.per_stage]) for i in range(layers))
        rates = [drop_path * i / max(1, layers - 1) for i in range(layers)]  # linear, as the code's linspace
        self.hst_blocks = nn.ModuleList(SideBlock(widths[i // self.per_stage], heads[i // self.per_stage], rates[i])
                                        for i in range(layers))
        self.hst_stage_norms = nn.ModuleList(nn.LayerNorm(w, eps=1e-6) for w in widths)
        self.hst_head_norm = nn.BatchNorm1d(widths[-1], affine=False, eps=1e-6)
        self.hst_head = nn.Linear(widths[-1], num_classes)
        self.apply(self._init)
        like = vit.cls_token
        for name, module in self.named_children():
            if name != "base":
                module.to(device=like.device, dtype=like.dtype)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.hst_head

    def vit_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The meta outputs m̂_l (B × 1 × D) and patch maps F_l (B × D × h × w) of every ViT layer."""
        metas: list[torch.Tensor] = []
        handles = [unwrapped(b).register_forward_hook(lambda m, a, out: metas.append(out[:, :1]))
                   for b in self.base.blocks]
        try:
            maps = self.base.forward_intermediates(x, intermediates_only=True)
        finally:
            for handle in handles:
                handle.remove()
        return metas, maps

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (B × d_s × H_s × W_s), e.g. for a feature pyramid."""
        metas, maps = self.vit_outputs(x)
        stages: list[torch.Tensor] = []
        for s, bridge in enumerate(self.hst_bridges):
            z, size = self.hst_down[s - 1](stages[-1]) if s else self.hst_stem(x)
            for layer in range(s * self.per_stage, (s + 1) * self.per_stage):
                g = F.interpolate(F.conv2d(maps[layer], bridge.weight[..., None, None], bridge.bias), size=size,
                                  mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
                meta = self.hst_meta_norms[layer](bridge(metas[layer]))
                z = self.hst_blocks[layer](z, torch.cat([meta, g.mean(dim=1, keepdim=True)], dim=1), g)
            z = self.hst_stage_norms[s](z)
            stages.append(z.transpose(1, 2).reshape(z.shape[0], -1, *size))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        last = self.forward_stages(x)[-1]
        return self.hst_head(self.hst_head_norm(last.flatten(2).mean(dim=-1)))


@register_method
class HST(Method):
    """Args:
    widths: side-network widths per stage (the code's 32, 48, 64, 72).
    heads: attention heads per stage (2, 4, 8, 12).
    drop_path: the side blocks' top drop-path rate; null: the backbone's (the code uses one rate for both).
    """

    name = "hst"
    prefix = "hst_"

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 72), heads: tuple[int, ...] = (2, 4, 8, 12),
                 drop_path: float | None = None):
        if len(widths) != 4 or len(heads) != 4 or any(w % h for w, h in zip(widths, heads, strict=True)):
            raise MethodError(f"method.widths={list(widths)} and method.heads={list(heads)} must be 4 stages with "
                              f"widths divisible by heads")
        self.widths, self.heads, self.drop_path = list(widths), list(heads), drop_path

    def attach(self, model: nn.Module, plan: dict | None = None) -> nn.Module:
        blocks = vit_blocks(model, "hst")
        if len(blocks) % 4:
            raise MethodError(f"hst feeds one side block per ViT layer over 4 stages; {len(blocks)} layers do not "
                              f"split into 4")
        num_classes = model.get_classifier().out_features
        freeze_backbone(model)
        model.reset_classifier(0)  # the ViT's own head is unused: the side network predicts
        for name, block in blocks:
            for norm in (block.norm1, block.norm2):
                norm.requires_grad_(True)
            model.set_submodule(name, MetaToken(block, model.embed_dim, block.norm1.weight))
        rate = self.drop_path
        if rate is None:
            rate = max((getattr(m, "drop_prob", 0.0) for m in model.modules()), default=0.0)
        return SideTuned(model, num_classes, self.widths, self.heads, rate)
