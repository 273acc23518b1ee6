"""The training augmentations of the papers' data pipelines, from timm and torchvision, per sample.

A pipeline's `train` block names one of:

- `none` — the cached images as they are (VTAB: no augmentation);
- `flip_randaugment` — horizontal flip then RandAugment on the resized image (SCT's "aug": timm's train transform
  with its RandomResizedCrop replaced by the resize);
- `random_crop_flip` — RandomCrop(size) then horizontal flip on the image resized to its shorter side (VPT's FGVC);
- `random_resized_crop` — timm's RandomResizedCropAndInterpolation on the whole image (`interpolation: random` picks
  bilinear or bicubic per image), horizontal flip, and optionally RandAugment (SSF's FGVC, NOAH's few-shot).

They run on PIL images on the host (in loader workers), each sample seeded from (seed, epoch, index), so a sample's
augmentation does not depend on the worker that drew it; random erasing and mixup/cutmix run on the device on the
normalised batch (timm's `RandomErasing`, `Mixup`). `build_train_transform` returns the timm/torchvision objects.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torchvision import transforms as T

from data.task import DataError

KINDS = ("none", "flip_randaugment", "random_crop_flip", "random_resized_crop")


def build_train_transform(spec: Mapping, size: int, mean: tuple[float, float, float]
                          ) -> Callable[[Image.Image], Image.Image] | None:
    """The host-side per-sample transform of a pipeline's `train` block (None for `none`)."""
    kind = spec.get("kind", "none")
    if kind not in KINDS:
        raise DataError(f"unknown training augmentation '{kind}'; choose one of: {', '.join(KINDS)}")
    if kind == "none":
        return None
    flip = float(spec.get("flip", 0.5))
    if kind == "random_crop_flip":
        return T.Compose([T.RandomCrop(size), T.RandomHorizontalFlip(flip)])
    primary, secondary, _ = create_transform(
        size, is_training=True, scale=tuple(spec.get("scale", (0.08, 1.0))),
        ratio=tuple(spec.get("ratio", (3 / 4, 4 / 3))), hflip=flip, auto_augment=spec.get("randaugment"),
        color_jitter=None,  # SSF's --simple-aug, HST's and NOAH's (RandAugment on) pipelines have none
        interpolation=spec.get("interpolation", "bicubic"), mean=mean, re_prob=0.0, separate=True)
    steps = list(primary.transforms) + list(secondary.transforms)
    if kind == "flip_randaugment":  # the resize is the cache's: timm's crop is dropped, as SCT's code does
        steps = [t for t in steps if not type(t).__name__.startswith("RandomResizedCrop")]
    return pillow_safe(T.Compose(steps))


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize with 0 bits giving the black image, as Pillow < 11 did (and so the papers' RandAugment);
    current Pillow refuses 0 bits."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def pillow_safe(transform: T.Compose) -> T.Compose:
    """The transform with its RandAugment posterize ops made safe for 0 bits (see `_posterize`)."""
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


def seeded(seed: int, epoch: int, index: int) -> int:
    """A sample's augmentation seed."""
    return (seed * 1_000_003 + epoch * 100_003 + index) % 2**31


class SeededRNG:
    """Seed `random`, numpy and torch for one sample, and put the previous states back afterwards (so augmenting
    in the training process does not disturb its own random streams)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        self.states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.set_rng_state(self.states[2])
