"""Datasets as `Task`s: readers, layouts, the decode-once cache. Nothing here knows about models.

A dataset config names a *source* (`_target_`) with `splits(protocol) -> (train_split, eval_split)` and
`load(split, geometry, cache) -> Split` (and optionally a `provenance` dict); the run's data pipeline
(conf/pipeline/) says how images are resized, augmented and normalised.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data.cache import DecodeCache, Geometry
from data.task import DataError, Split, Task
from data.transforms import build_train_transform

PROTOCOLS = ("final", "tune")


def build_task(dataset: DictConfig, protocol: str, pipeline: DictConfig, image_size: int,
               cache: DecodeCache | None = None) -> Task:
    """Load the training and evaluation splits of `dataset` under `protocol`, prepared as `pipeline` says.

    Evaluation images follow `pipeline.eval` (a direct resize, or a resize and centre crop). Training images are
    the same unless the pipeline augments whole images: then they are cached at `pipeline.source_size` on their
    shorter side, aspect kept, and cropped per sample (`Task.train_transform`).
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    source = _instantiate(dataset.source)
    interpolation = pipeline.interpolation
    eval_geometry = Geometry(image_size, interpolation, pipeline.eval.get("crop_pct"), pipeline.eval.mode)
    train_geometry = eval_geometry
    if pipeline.train.kind in ("random_crop_flip", "random_resized_crop"):
        size = pipeline.get("source_size") or image_size
        if size < image_size and pipeline.train.kind == "random_crop_flip":
            raise DataError(f"pipeline.source_size={size} is smaller than the {image_size}-pixel crops it feeds")
        train_geometry = Geometry(size, interpolation if interpolation != "tf_bilinear" else "bilinear",
                                  mode="shorter")
    transform = build_train_transform(OmegaConf.to_container(pipeline.train, resolve=True), image_size,
                                      tuple(pipeline.mean))
    train_name, eval_name = source.splits(protocol)
    train, evaluation = source.load(train_name, train_geometry, cache), source.load(eval_name, eval_geometry, cache)
    _check_labels(dataset, protocol, train, evaluation)
    return Task(
        name=dataset.name, benchmark=dataset.benchmark, group=dataset.group, num_classes=int(dataset.num_classes),
        train=train, eval=evaluation, train_transform=transform,
        meta={
            "data_format": source.data_format,
            "train_split": train_name,
            "eval_split": eval_name,
            "train_images": len(train),
            "eval_images": len(evaluation),
            "image_size": image_size,
            "interpolation": interpolation,
            "train_preprocessing": train_geometry.describe() + (f", then {_describe(transform)}" if transform else ""),
            "eval_preprocessing": eval_geometry.describe(),
            **getattr(source, "provenance", {}),
        },
    )


def _describe(transform) -> str:
    return " → ".join(type(t).__name__ for t in transform.transforms) + " (per sample, on the host)"


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
