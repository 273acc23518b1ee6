"""Synthetic VTAB-1k tasks: seeded random images in a real task's split sizes and class count, made in memory.

`dataset=synthetic dataset.like=sun397` runs the whole pipeline (method, trainer, evaluation, report) on 1,000
training images and sun397's 21,750 test images of 397 classes, at the backbone's input size, with no dataset and
no files: what `scripts/bench.py gpu` times. Top-1 is chance; the provenance says the data is synthetic.

Each source split (train800, val200, test) has its own seed, and train800val200 is train800 then val200, as in the
NOAH layout. Labels cycle through the classes in a seeded order, so every class occurs once a split has as many
images as classes. A split draws at most `DISTINCT` images and repeats them: drawing dsprites' 73,728 test images
at 224² (11 GB) would take longer than evaluating them, and the compute of a forward pass does not depend on pixels.
"""

from __future__ import annotations

import zlib

import torch

from data.cache import DecodeCache, Geometry
from data.task import VTAB_PROTOCOL_SPLITS, DataError, Split
from data.vtab import vtab_task
from data.vtab_tfds import TEST_SIZES

DISTINCT = 1000


class SyntheticSource:
    """Random uint8 images in the VTAB-1k split sizes of the task `like` (a NOAH folder name or alias)."""

    def __init__(self, like: str):
        self.task = vtab_task(like)
        self.sizes = {"train800": 800, "val200": 200, "test": TEST_SIZES[self.task.name]}
        self.data_format = f"synthetic (seeded random uint8 images, in memory) in {self.task.name}'s VTAB-1k sizes"
        self.provenance = {"synthetic": {"like": self.task.name, "distinct_images": DISTINCT}}

    def splits(self, protocol: str) -> tuple[str, str]:
        return VTAB_PROTOCOL_SPLITS[protocol]

    def load(self, split: str, geometry: Geometry, cache: DecodeCache | None = None) -> Split:
        if split == "train800val200":
            parts = [self.load(name, geometry) for name in ("train800", "val200")]
            return Split(split, torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
        if split not in self.sizes:
            raise DataError(f"synthetic data has no split '{split}'; it has {', '.join(self.sizes)}, train800val200")
        n, size = self.sizes[split], geometry.size
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.task.name}/{split}".encode()))
        bank = torch.randint(0, 256, (min(n, DISTINCT), 3, size, size), dtype=torch.uint8, generator=g)
        images = bank.repeat(-(-n // len(bank)), 1, 1, 1)[:n]
        classes = torch.randperm(self.task.num_classes, generator=g)
        return Split(split, images, classes[torch.arange(n) % len(classes)])
