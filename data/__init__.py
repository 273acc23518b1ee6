"""Datasets as `Task`s: readers, layouts and the embedded default. Nothing here knows about models.

A dataset config names a *source* (`_target_`) with two methods:
`splits(protocol) -> (train_split, eval_split)` and `load(split, image_size, interpolation) -> Split`.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from data.task import DataError, Split, Task

PROTOCOLS = ("final", "tune")


def build_task(dataset: DictConfig, protocol: str, image_size: int, interpolation: str) -> Task:
    """Load the training and evaluation splits of `dataset` under `protocol`, resized to `image_size`."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    source = instantiate(dataset.source)
    train_name, eval_name = source.splits(protocol)
    task = Task(
        name=dataset.name,
        benchmark=dataset.benchmark,
        group=dataset.group,
        num_classes=int(dataset.num_classes),
        train=source.load(train_name, image_size, interpolation),
        eval=source.load(eval_name, image_size, interpolation),
    )
    task.meta = {
        "data_format": source.data_format,
        "train_split": train_name,
        "eval_split": eval_name,
        "train_images": len(task.train),
        "eval_images": len(task.eval),
        "image_size": image_size,
        "interpolation": interpolation,
    }
    return task


__all__ = ["PROTOCOLS", "DataError", "Split", "Task", "build_task"]
