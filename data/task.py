"""The `Task` every reader returns: decoded uint8 images already at the backbone's input size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class DataError(ValueError):
    """The data cannot be used as configured (the message names the path or value and the fix)."""


@dataclass(frozen=True)
class Normalisation:
    """Inputs as (x / 255 − mean) / std, per channel."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


NORMALISATIONS = {n.name: n for n in (
    Normalisation("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # VPT, NOAH, SPT, SCT, E2VPT
    Normalisation("inception", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Google's ViT weights; SSF, HST, DyT
    Normalisation("none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # inputs in [0, 1]: the 1-bit adapters
)}


def normalisation(name: str) -> Normalisation:
    if name not in NORMALISATIONS:
        raise DataError(f"unknown normalisation '{name}'; choose one of: {', '.join(NORMALISATIONS)}")
    return NORMALISATIONS[name]


# Roles of the VTAB-1k list files under each protocol: (training split, evaluation split).
VTAB_PROTOCOL_SPLITS = {
    "final": ("train800val200", "test"),
    "tune": ("train800", "val200"),
}


@dataclass
class Split:
    """One split: `images` uint8 N×3×H×W, `labels` int64 N; `sizes` (N×2: height, width) when the images keep their
    aspect ratio and are stored top-left in a padded array."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    sizes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"split '{self.name}': images must be uint8 N×3×H×W, got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"split '{self.name}': {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError(f"split '{self.name}' is empty")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Task:
    """A classification task under one protocol: what to train on and what to evaluate on."""

    name: str
    benchmark: str
    group: str
    num_classes: int
    train: Split
    eval: Split
    train_transform: Callable | None = None  # per-sample training augmentation (PIL → PIL), on the host
    meta: dict = field(default_factory=dict)
