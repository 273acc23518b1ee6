"""Building blocks shared by methods: tuners that wrap one module (methods/tuners.py) and plain layers.

- `ScaleShift`: the per-channel affine map y = γ ⊙ x + β on a layer's output (SSF); it folds into the layer
  when that layer is affine in its output channels (Linear, Conv2d, LayerNorm).
- `LoRALinear`: low-rank updates on row ranges of a frozen Linear (a fused qkv as a whole, or q and v).
- `Bottleneck`: the D → r → D adapter; placed by `SequentialAdapter` (in series after a module) or
  `ParallelAdapter` (beside a block's sub-branch, reading the branch's input).
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn

from methods.base import MethodError
from methods.tuners import Tuner


def output_channel_dim(module: nn.Module) -> int | None:
    """The dimension of `module`'s output that holds its channels, or None if it is not a foldable layer.

    Linear and LayerNorm act on the last dimension (tokens B×N×C, or NHWC); Conv2d and timm's
    LayerNorm2d produce NCHW.
    """
    if isinstance(module, LayerNorm2d | nn.Conv2d):
        return 1
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        return -1
    return None


def output_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    raise TypeError(f"no output channels for {type(module).__name__}")


@torch.no_grad()
def fold_scale_shift(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """Rewrite `layer` in place so that layer(x) == scale ⊙ old_layer(x) + shift (per output channel)."""
    if isinstance(layer, nn.LayerNorm):
        layer.weight.mul_(scale)
    else:  # Linear (C_out × C_in) or Conv2d (C_out × C_in × k × k): scale output row c by γ_c
        layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.ndim - 1))))
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.clone(), requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.mul_(scale).add_(shift)
    return layer


class ScaleShift(Tuner):
    """Wraps a layer: forward(x) = γ ⊙ layer(x) + β, γ and β of the layer's output width.

    Args:
        layer: the frozen layer whose output is scaled and shifted.
        init_std: γ ~ N(1, init_std), β ~ N(0, init_std), as SSF initialises them.
    """

    mergeable = True

    def __init__(self, layer: nn.Module, init_std: float = 0.02):
        dim = output_channel_dim(layer)
        if dim is None:
            raise TypeError(f"ScaleShift cannot follow a {type(layer).__name__}")
        super().__init__(layer)
        self.channel_dim = dim
        width = output_channels(layer)
        ref = next(layer.parameters())
        self.ssf_scale = nn.Parameter(torch.empty(width, device=ref.device, dtype=ref.dtype))
        self.ssf_shift = nn.Parameter(torch.empty(width, device=ref.device, dtype=ref.dtype))
        nn.init.normal_(self.ssf_scale, mean=1.0, std=init_std)
        nn.init.normal_(self.ssf_shift, mean=0.0, std=init_std)

    def _broadcast(self, p: torch.Tensor, ndim: int) -> torch.Tensor:
        trailing = ndim - 1 - (self.channel_dim % ndim)
        return p.view(-1, *([1] * trailing))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.active:
            return y
        return y * self._broadcast(self.ssf_scale, y.ndim) + self._broadcast(self.ssf_shift, y.ndim)

    def merged(self) -> nn.Module:
        """The wrapped layer with γ and β folded into its weight and bias."""
        return fold_scale_shift(self.base, self.ssf_scale.detach(), self.ssf_shift.detach())

    def extra_repr(self) -> str:
        return f"channels={self.ssf_scale.numel()}, channel_dim={self.channel_dim}"


class LoRALinear(Tuner):
    """A frozen Linear plus low-rank updates on chosen row ranges of its output.

        y = W x + b,   y[s:e] += scale · B_k A_k dropout(x)   for each slice k = (s, e)

    One slice over the whole output adapts a fused qkv as a whole (NOAH's "LoRA (8)"); the slices
    (0, D) and (2D, 3D) adapt q and v separately (the original LoRA set-up). A_k and B_k are bias-free Linears
    (`lora_A.k`, `lora_B.k`), so techniques that act on Linears (activation compression, quantisation) see them.

    Args:
        base: the frozen Linear.
        rank: r, the inner dimension of every B_k A_k.
        slices: output row ranges to adapt; None = all rows.
        scale: s (α / r in the LoRA paper; 1 in NOAH).
        dropout: on the LoRA input (`dropout_at="input"`, NOAH and peft) or between A and B (`"hidden"`, the 1-bit
            adapters' Bi-LoRA).
        init: "paper" — A Kaiming-uniform (a=√5), B = 0, so the layer starts as `base`;
              "noah" — A and B trunc-normal std 0.02, as NOAH's model re-initialises them after building.
    """

    mergeable = True

    def __init__(self, base: nn.Linear, rank: int, slices: list[tuple[int, int]] | None = None, scale: float = 1.0,
                 dropout: float = 0.0, init: str = "paper", dropout_at: str = "input"):
        super().__init__(base)
        self.slices = sorted(tuple(s) for s in slices) if slices else [(0, base.out_features)]
        self.scale, self.dropout_at = scale, dropout_at
        self.dropout = nn.Dropout(dropout)
        ref = base.weight
        like = {"device": ref.device, "dtype": ref.dtype}
        self.lora_A = nn.ModuleList([nn.Linear(base.in_features, rank, bias=False, **like) for _ in self.slices])
        self.lora_B = nn.ModuleList([nn.Linear(rank, e - s, bias=False, **like) for s, e in self.slices])
        for a, b in zip(self.lora_A, self.lora_B, strict=True):
            if init == "paper":
                nn.init.kaiming_uniform_(a.weight, a=5**0.5)
                nn.init.zeros_(b.weight)
            elif init == "noah":
                nn.init.trunc_normal_(a.weight, std=0.02)
                nn.init.trunc_normal_(b.weight, std=0.02)
            else:
                raise ValueError(f"unknown LoRA init '{init}'; choose paper or noah")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.active:
            return y
        if self.dropout_at == "input":
            h = self.dropout(x)
            deltas = [self.scale * b(a(h)) for a, b in zip(self.lora_A, self.lora_B, strict=True)]
        else:
            deltas = [self.scale * b(self.dropout(a(x))) for a, b in zip(self.lora_A, self.lora_B, strict=True)]
        if self.slices == [(0, y.shape[-1])]:  # the fused qkv as a whole
            return y + deltas[0]
        pieces, end = [], 0
        for (s, e), delta in zip(self.slices, deltas, strict=True):
            if s > end:
                pieces.append(y.new_zeros(*y.shape[:-1], s - end))
            pieces.append(delta)
            end = e
        if end < y.shape[-1]:
            pieces.append(y.new_zeros(*y.shape[:-1], y.shape[-1] - end))
        return y + torch.cat(pieces, dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """scale · B A placed in the output rows it adapts (the same shape as the base weight)."""
        delta = torch.zeros_like(self.base.weight)
        for (s, e), a, b in zip(self.slices, self.lora_A, self.lora_B, strict=True):
            delta[s:e] += self.scale * (b.weight @ a.weight)
        return delta

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base Linear with W ← W + scale · B A (exact)."""
        self.base.weight += self.delta_weight().detach()
        return self.base


class QuickGELU(nn.Module):
    """z · σ(1.702 z), the activation of NOAH's adapters (from CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "quick_gelu": QuickGELU}
BOTTLENECK_INITS = ("lora", "xavier", "noah", "zero")


class Bottleneck(nn.Module):
    """The bottleneck adapter: scale · up(dropout(act(down(x)))), D → `bottleneck` → D.

    Args:
        init: "lora" — down Kaiming-uniform (a=√5), up and biases 0: exactly zero output at init
              (AdaptFormer); "xavier" — Xavier-uniform weights, biases N(0, 1e-6) (NOAH's adapter module);
              "noah" — trunc-normal std 0.02 weights, zero biases (what NOAH's model re-initialises them to);
              "zero" — every tensor 0 (VPT's adapter baseline: only the up bias can ever learn).
    """

    def __init__(self, dim: int, bottleneck: int, act: str = "relu", dropout: float = 0.0, scale: float = 1.0,
                 bias: bool = True, init: str = "lora", device=None, dtype=None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{act}'; choose one of: {', '.join(ACTIVATIONS)}")
        self.down = nn.Linear(dim, bottleneck, bias=bias, device=device, dtype=dtype)
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim, bias=bias, device=device, dtype=dtype)
        self.scale = scale
        self._init(init)

    @torch.no_grad()
    def _init(self, init: str) -> None:
        linears = (self.down, self.up)
        if init == "lora":
            nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
            nn.init.zeros_(self.up.weight)
            biases = 0.0
        elif init == "xavier":
            for m in linears:
                nn.init.xavier_uniform_(m.weight)
            biases = 1e-6
        elif init == "noah":
            for m in linears:
                nn.init.trunc_normal_(m.weight, std=0.02)
            biases = 0.0
        elif init == "zero":
            for m in linears:
                nn.init.zeros_(m.weight)
            biases = 0.0
        else:
            raise ValueError(f"unknown adapter init '{init}'; choose lora, xavier, noah or zero")
        for m in linears:
            if m.bias is not None:
                nn.init.normal_(m.bias, std=biases) if biases else nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


class SequentialAdapter(Tuner):
    """y = base(x);  y ← y + adapter(y): an adapter in series after `base` (inside the branch it sits in)."""

    def __init__(self, base: nn.Module, adapter: nn.Module, prefix: str):
        super().__init__(base)
        self.prefix = prefix
        self.add_module(prefix, adapter)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = self.base(*args, **kwargs)
        return y + getattr(self, self.prefix)(y) if self.active else y


class ParallelAdapter(Tuner):
    """out = base(x) + adapter(h), h the input of `base.<tap>` during this call: an adapter parallel to a
    sub-branch of a block (AdaptFormer reads the residual stream entering `norm2`).

    The input is taken by a read-only forward pre-hook that lives only for the call, so no value outlives it;
    the adapter's output is reshaped to the block's output (Swin blocks return B×H×W×C).
    """

    def __init__(self, base: nn.Module, adapter: nn.Module, tap: str, prefix: str):
        super().__init__(base)
        self.tap, self.prefix = tap, prefix
        self.add_module(prefix, adapter)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if not self.active:
            return self.base(*args, **kwargs)
        seen: list[torch.Tensor] = []
        handle = getattr(self.base, self.tap).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            out = self.base(*args, **kwargs)
        finally:
            handle.remove()
        return out + getattr(self, self.prefix)(seen[-1]).reshape(out.shape)


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every transformer block: a module with `attn`, `mlp` and `norm2` children
    (timm's ViT `Block`, Swin's `SwinTransformerBlock`, …)."""
    return [(n, m) for n, m in model.named_modules()
            if all(isinstance(m._modules.get(a), nn.Module) for a in ("attn", "mlp", "norm2"))]


def unwrapped(module: nn.Module) -> nn.Module:
    """The module under any tuners wrapping it."""
    while isinstance(module, Tuner):
        module = module.base
    return module


def block_width(block: nn.Module) -> int:
    return output_channels(unwrapped(block.norm2))


def vit_blocks(model: nn.Module, method: str) -> list[tuple[str, nn.Module]]:
    """(name, block) of a timm VisionTransformer's pre-norm `Block`s; a one-line refusal for anything else (the
    methods that rewrite the block between its attention and MLP halves are defined on that block)."""
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise MethodError(f"{method} is defined on a timm VisionTransformer, not {type(model).__name__}")
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    if not all(type(unwrapped(b)) is Block for _, b in blocks):
        raise MethodError(f"{method} needs timm's pre-norm ViT Block in every layer")
    return blocks


def attention_half(block: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """h = x + DropPath(LayerScale(Attn(LN1 x))): the first residual half of a timm ViT `Block`, from its own
    submodules (for methods that act on h before the MLP half)."""
    return x + block.drop_path1(block.ls1(block.attn(block.norm1(x), **kwargs)))


def mlp_branch(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """DropPath(LayerScale(MLP(LN2 h))): the second residual branch of a timm ViT `Block`."""
    return block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
