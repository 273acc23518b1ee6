"""Batches of a decoded split, normalised on the training device.

Images stay uint8 until a batch is taken; `(x / 255 − mean) / std` is one in-place multiply and add
on the device. A split small enough (VTAB-1k's 1,000 training images are 150 MB at 224²) is moved to the
device once, so an epoch costs no host work beyond index generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from data.task import Split

_RESIDENT_BYTES = 4 << 30


class DeviceLoader:
    """Iterate (normalised float images, labels) batches of `split` on `device`.

    Args:
        shuffle: a new order each epoch, drawn from `seed + epoch` (so a resumed run sees the same order).
        drop_last: drop the incomplete last batch when the split holds at least one full batch.
        augment: applied to each normalised batch with a device generator seeded from `seed + epoch`.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        resident = device.type == "cpu" or split.images.numel() <= _RESIDENT_BYTES
        self.images = split.images.to(device) if resident else split.images.pin_memory()
        self.labels = split.labels.to(device)
        self.batch_size, self.device = batch_size, device
        self.shuffle, self.seed, self.epoch, self.augment = shuffle, seed, 0, augment
        self.drop_last = drop_last and len(split) >= batch_size
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._offset = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) / std_t

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        generator = torch.Generator(self.device).manual_seed(self.seed + self.epoch) if self.augment else None
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            x = x.float().mul_(self._scale).add_(self._offset)
            yield (self.augment(x, generator) if self.augment else x), self.labels[idx.to(self.device)]


class SplitPass:
    """A split in file order, normalised, without augmentation: what a method's data-dependent step reads.

    `pass_(batch_size, max_batches)` yields (images, labels) batches on `device`.
    """

    def __init__(self, split: Split, device: torch.device, mean: Sequence[float], std: Sequence[float],
                 num_classes: int):
        self.split, self.device, self.mean, self.std = split, device, mean, std
        self.num_classes, self.images = num_classes, len(split)

    def __call__(self, batch_size: int, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DeviceLoader(self.split, batch_size, self.device, self.mean, self.std)
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                return
            yield batch
