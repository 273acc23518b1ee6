"""Building blocks shared by methods.

`ScaleShift` is the per-channel affine map y = γ ⊙ x + β applied to a layer's output (SSF); it folds
into the layer it follows when that layer is affine in its output channels (Linear, Conv2d, LayerNorm).
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn


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


class ScaleShift(nn.Module):
    """Wraps a layer: forward(x) = γ ⊙ layer(x) + β, γ and β of the layer's output width.

    Args:
        layer: the frozen layer whose output is scaled and shifted.
        init_std: γ ~ N(1, init_std), β ~ N(0, init_std), as SSF initialises them.
    """

    def __init__(self, layer: nn.Module, init_std: float = 0.02):
        super().__init__()
        dim = output_channel_dim(layer)
        if dim is None:
            raise TypeError(f"ScaleShift cannot follow a {type(layer).__name__}")
        self.layer = layer
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
        y = self.layer(x)
        return y * self._broadcast(self.ssf_scale, y.ndim) + self._broadcast(self.ssf_shift, y.ndim)

    def merged(self) -> nn.Module:
        """The wrapped layer with γ and β folded into its weight and bias."""
        return fold_scale_shift(self.layer, self.ssf_scale.detach(), self.ssf_shift.detach())

    def extra_repr(self) -> str:
        return f"channels={self.ssf_scale.numel()}, channel_dim={self.channel_dim}"
