"""Datasets as `Task`s: readers, layouts, the decode-once cache. Nothing here knows about models.

A dataset config names a *source* (`_target_`) with `splits(protocol) -> (train_split, eval_split)` and
`load(split, geometry, cache) -> Split`, and optionally a training `augment` run on the device.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from data.cache import DecodeCache, Geometry
from data.task import DataError, Split, Task

PROTOCOLS = ("final", "tune")


def build_task(dataset: DictConfig, protocol: str, image_size: int, interpolation: str,
               cache: DecodeCache | None = None) -> Task:
    """Load the training and evaluation splits of `dataset` under `protocol`, at `image_size`.

    Evaluation images are resized directly (VTAB) or resized and centre-cropped (`dataset.crop_pct`);
    with an `augment`, training images are kept at the crop's source size and cropped on the device.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    source = _instantiate(dataset.source)
    augment = _instantiate(dataset.augment) if dataset.get("augment") else None
    crop_pct = dataset.get("crop_pct")
    eval_geometry = Geometry(image_size, interpolation, crop_pct)
    train_geometry = eval_geometry
    if augment is not None:
        train_geometry = Geometry(round(image_size / (crop_pct or 1.0)), interpolation, 1.0 if crop_pct else None)
    train_name, eval_name = source.splits(protocol)
    train, evaluation = source.load(train_name, train_geometry, cache), source.load(eval_name, eval_geometry, cache)
    _check_labels(dataset, protocol, train, evaluation)
    return Task(
        name=dataset.name, benchmark=dataset.benchmark, group=dataset.group, num_classes=int(dataset.num_classes),
        train=train, eval=evaluation, augment=augment,
        meta={
            "data_format": source.data_format,
            "train_split": train_name,
            "eval_split": eval_name,
            "train_images": len(train),
            "eval_images": len(evaluation),
            "image_size": image_size,
            "interpolation": interpolation,
            "train_preprocessing": train_geometry.describe() + (f", then {augment.describe()}" if augment else ""),
            "eval_preprocessing": eval_geometry.describe(),
        },
    )


def _instantiate(node: DictConfig):
    """Hydra's instantiate, re-raising a source's own `DataError` as it is."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise


def _check_labels(dataset: DictConfig, protocol: str, train: Split, evaluation: Split) -> None:
    classes = int(dataset.num_classes)
    for split in (train, evaluation):
        lo, hi = int(split.labels.min()), int(split.labels.max())
        if lo < 0 or hi >= classes:
            raise DataError(f"dataset {dataset.name}, split {split.name}: label {hi if hi >= classes else lo} is "
                            f"outside [0, {classes}); fix dataset.num_classes or the split's labels")
    seen = max(int(train.labels.max()), int(evaluation.labels.max())) + 1
    if protocol == "final" and seen != classes:
        raise DataError(f"dataset.num_classes={classes} but the labels of {train.name} and {evaluation.name} "
                        f"cover {seen} classes (0..{seen - 1}); fix dataset.num_classes")


__all__ = ["PROTOCOLS", "DataError", "DecodeCache", "Geometry", "Split", "Task", "build_task"]
