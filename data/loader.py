"""Batches of a decoded split, normalised on the training device.

Images stay uint8 until a batch is taken; `(x / 255 − mean) / std` is one in-place multiply and add
on the device. A split small enough (VTAB-1k's 1,000 training images are 150 MB at 224²) is moved to the
device once, so an epoch costs no host work beyond index generation. A pipeline that augments each image
(random crops, RandAugment) does it on the host in loader workers (`AugmentedLoader`); random erasing and
mixup/cutmix act on the normalised batch on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from data.task import Split, Task
from data.transforms import SeededRNG, seeded

_RESIDENT_BYTES = 4 << 30


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a split of `nbytes` is kept on `device`: always on the CPU; on a GPU when it takes at most 4 GiB or a
    quarter of the memory free now (so dsprites' 11 GB test split at 224² stays on a 141 GB GPU, with room for
    other runs sharing it), else it is pinned on the host and each batch copied."""
    if device.type == "cpu":
        return True
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    return nbytes <= max(_RESIDENT_BYTES, free // 4)


class DeviceLoader:
    """Iterate (normalised float images, labels) batches of `split` on `device`.

    Args:
        shuffle: a new order each epoch, drawn from `seed + epoch` (so a resumed run sees the same order).
        drop_last: drop the incomplete last batch when the split holds at least one full batch.
        batch_ops: applied in turn to each normalised (images, labels) batch on the device (random erasing, mixup).
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 batch_ops: Sequence[BatchOp] = ()):
        resident = fits_on_device(split.images.numel() * split.images.element_size(), device)
        self.images = split.images.to(device) if resident else split.images.pin_memory()
        self._batching(split.labels.to(device), batch_size, device, mean, std, shuffle, drop_last, seed, batch_ops)

    def _batching(self, labels: torch.Tensor, batch_size: int, device: torch.device, mean: Sequence[float],
                  std: Sequence[float], shuffle: bool, drop_last: bool, seed: int, batch_ops: Sequence[BatchOp]):
        self.labels, self.batch_size, self.device, self.batch_ops = labels, batch_size, device, list(batch_ops)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.drop_last = drop_last and len(labels) >= batch_size
        self._normalise = Normalise(mean, std, device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def order(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return torch.arange(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order()
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            yield _apply(self.batch_ops, self._normalise(x), self.labels[idx.to(self.device)])


BatchOp = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _apply(ops: Sequence[BatchOp], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for op in ops:
        x, y = op(x, y)
    return x, y


class Normalise:
    """uint8 N×3×H×W → float (x / 255 − mean) / std, one multiply and one add on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.offset = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).add_(self.offset)


class RandomErase:
    """timm's RandomErasing (pixel mode) on each image of a normalised batch, on the device."""

    def __init__(self, probability: float, device: torch.device):
        from timm.data.random_erasing import RandomErasing

        self.erase = RandomErasing(probability=probability, mode="pixel", device=str(device))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.erase(x), y


class MixupCutmix:
    """timm's Mixup/CutMix on a normalised batch; the targets become soft (label smoothing included)."""

    def __init__(self, num_classes: int, **kwargs):
        from timm.data import Mixup

        self.mixup = Mixup(num_classes=num_classes, **kwargs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(x, y)


class _Samples(torch.utils.data.Dataset):
    """(epoch, index) → the augmented uint8 image and its label; each sample seeded on its own."""

    def __init__(self, split: Split, transform: Callable, seed: int):
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = key
        image = self.split.images[i]
        if self.split.sizes is not None:
            h, w = self.split.sizes[i].tolist()
            image = image[:, :h, :w]
        with SeededRNG(seeded(self.seed, epoch, i)):
            out = self.transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1), int(self.split.labels[i])


class _Batches:
    """The (epoch, index) batches of a loader's current epoch, in its order (read in the training process)."""

    def __init__(self, loader: DeviceLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, size, epoch = self.loader.order().tolist(), self.loader.batch_size, self.loader.epoch
        for b in range(len(self.loader)):
            yield [(epoch, i) for i in order[b * size:(b + 1) * size]]


class AugmentedLoader(DeviceLoader):
    """Like `DeviceLoader`, with a per-sample `transform` on the host (PIL images, in `workers` processes,
    prefetched while the device trains) before the batch reaches the device."""

    def __init__(self, split: Split, batch_size: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], transform: Callable, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, batch_ops: Sequence[BatchOp] = (), workers: int = 0):
        self._batching(split.labels, batch_size, device, mean, std, shuffle, drop_last, seed, batch_ops)
        self.loader = torch.utils.data.DataLoader(_Samples(split, transform, seed), batch_sampler=_Batches(self),
                                                  num_workers=workers, persistent_workers=workers > 0,
                                                  pin_memory=device.type == "cuda")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield _apply(self.batch_ops, self._normalise(x), y)


def train_loader(task: Task, batch_size: int, device: torch.device, pipeline, seed: int,
                 workers: int = 0) -> DeviceLoader:
    """The training loader a pipeline describes: resident device batches, with per-sample host augmentation where
    it has one, then random erasing and mixup/cutmix on the device."""
    mean, std = list(pipeline.mean), list(pipeline.std)
    ops: list[BatchOp] = []
    if pipeline.get("random_erasing"):
        ops.append(RandomErase(float(pipeline.random_erasing), device))
    if pipeline.get("mixup"):
        ops.append(MixupCutmix(task.num_classes, **dict(pipeline.mixup)))
    if task.train_transform is None:
        return DeviceLoader(task.train, batch_size, device, mean, std, shuffle=True, drop_last=True, seed=seed,
                            batch_ops=ops)
    return AugmentedLoader(task.train, batch_size, device, mean, std, task.train_transform, seed=seed, batch_ops=ops,
                           workers=workers)


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
