"""Training augmentation on the device, for a whole batch at once."""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align


class RandomResizedCropFlip:
    """RandomResizedCrop (area `scale`, aspect `ratio`, as torchvision samples them) to size×size, then a
    horizontal flip with probability `flip`; every image of the batch gets its own crop.

    The crop is bilinear with area averaging (torchvision's `roi_align`), one kernel per batch.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5):
        self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        area = h * w * torch.empty(n, device=dev).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(n, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                        generator=generator)
        aspect = torch.exp(log_ratio)
        cw = torch.sqrt(area * aspect).clamp(max=w)
        ch = torch.sqrt(area / aspect).clamp(max=h)
        x0 = torch.rand(n, device=dev, generator=generator) * (w - cw)
        y0 = torch.rand(n, device=dev, generator=generator) * (h - ch)
        boxes = torch.stack([torch.arange(n, device=dev, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], dim=1)
        out = roi_align(x, boxes.to(x.dtype), output_size=self.size, spatial_scale=1.0, sampling_ratio=2,
                        aligned=True)
        flip = torch.rand(n, device=dev, generator=generator) < self.flip
        return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)

    def describe(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio}) + HFlip({self.flip}), on device"
