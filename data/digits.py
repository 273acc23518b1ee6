"""The embedded default: scikit-learn's bundled handwritten digits laid out as a VTAB-1k task.

1,797 8×8 greyscale images in 10 classes, split by a fixed permutation into train800, val200,
train800val200 (the same 1,000 images) and test (the other 797), then resized once to the backbone's
input size and replicated to three channels. No download, no files.

`classes` keeps a subset of the digits (labels renumbered 0..k−1 in that order) and `shots` keeps k training
images per class (drawn with `fewshot_seed`): `dataset=digits_source` (digits 0–4) and `dataset=digits_target`
(digits 5–9, few-shot) are the upstream and downstream tasks of a PVP-style experiment.

`DigitsRotationSource` is the self-supervised source task the demo pre-trains its tiny backbone on
(rotation prediction, Gidaris et al., ICLR 2018): the train800 images, each rotated by 0/90/180/270°,
labelled by the rotation. It never sees a digit label, val200 or test.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.cache import DecodeCache, Geometry
from data.task import VTAB_PROTOCOL_SPLITS, DataError, Split

_PERMUTATION_SEED = 0
_SLICES = {
    "train800": slice(0, 800),
    "val200": slice(800, 1000),
    "train800val200": slice(0, 1000),
    "test": slice(1000, None),
}


def resize_uint8(images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize uint8 N×C×H×W images to size×size (antialiased when shrinking), back to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode=interpolation,
                      align_corners=False if interpolation != "nearest" else None,
                      antialias=interpolation in ("bilinear", "bicubic"))
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(_PERMUTATION_SEED).permutation(len(bunch.target))
    pixels = torch.from_numpy(bunch.images[order] * (255.0 / 16.0)).round().to(torch.uint8)
    return pixels[:, None].expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(bunch.target[order]).long()


class DigitsSource:
    """sklearn digits in the VTAB-1k split layout.

    Args:
        classes: the digits kept (None: all ten), renumbered 0..k−1 in this order.
        shots: training images kept per class (None: all), drawn with `fewshot_seed`.
    """

    data_format = "sklearn-digits (8x8 uint8, in memory)"

    def __init__(self, classes: list[int] | None = None, shots: int | None = None, fewshot_seed: int = 0):
        if classes is not None and (not classes or len(set(classes)) != len(classes)
                                    or not set(classes) <= set(range(10))):
            raise DataError(f"dataset.classes={classes} must be distinct digits 0-9")
        if shots is not None and shots < 1:
            raise DataError(f"dataset.shots={shots} must be at least 1")
        self.classes, self.shots, self.fewshot_seed = classes, shots, fewshot_seed
        self.training = set()

    def splits(self, protocol: str) -> tuple[str, str]:
        train, evaluation = VTAB_PROTOCOL_SPLITS[protocol]
        self.training.add(train)
        return train, evaluation

    def load(self, split: str, geometry: Geometry, cache: DecodeCache | None = None) -> Split:
        """The split resized in memory (8×8 sources need no cache; a crop of them would be meaningless)."""
        if split not in _SLICES:
            raise DataError(f"digits has no split '{split}'; it has {', '.join(_SLICES)}")
        images, labels = _digits()
        part = _SLICES[split]
        images, labels = images[part], labels[part]
        if self.classes is not None:
            keep = torch.isin(labels, torch.tensor(self.classes))
            images, labels = images[keep], labels[keep]
            labels = torch.tensor([self.classes.index(int(y)) for y in labels])
        if self.shots is not None and split in self.training:
            g = torch.Generator().manual_seed(self.fewshot_seed)
            order = torch.randperm(len(labels), generator=g)
            chosen = torch.cat([order[labels[order] == c][:self.shots] for c in labels.unique()]).sort().values
            images, labels = images[chosen], labels[chosen]
        return Split(split, resize_uint8(images, geometry.size, geometry.interpolation), labels)


class DigitsRotationSource(DigitsSource):
    """Rotation prediction on the digits train800 (training) and val200 (evaluation) images."""

    data_format = "sklearn-digits rotations (self-supervised, no digit labels)"

    def splits(self, protocol: str) -> tuple[str, str]:
        return "train800", "val200"

    def load(self, split: str, geometry: Geometry, cache: DecodeCache | None = None) -> Split:
        base = super().load(split, geometry)
        images = torch.cat([torch.rot90(base.images, k, dims=(2, 3)) for k in range(4)])
        labels = torch.arange(4).repeat_interleave(len(base))
        return Split(f"{split}-rotations", images, labels)
