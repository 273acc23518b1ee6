"""The method protocol every PEFT method implements, and the helpers they share.

A method changes a timm model in place: it inserts its modules and decides which parameters train.
It knows nothing about files, loggers or Hydra; the runner calls these hooks in this order:

    attach(model) → prepare(model, loader) → [training: extra_loss, on_epoch_end] → trainable_state / merge
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn


class MethodError(ValueError):
    """A method cannot be built or attached as configured (the message says what to change)."""


class Method(ABC):
    """Base class: one subclass per PEFT method, registered by `name` (see `methods.register_method`)."""

    name: ClassVar[str]

    @abstractmethod
    def attach(self, model: nn.Module) -> None:
        """Insert the method's modules and set `requires_grad`, in place."""

    def prepare(self, model: nn.Module, loader: Iterable) -> None:  # noqa: B027 - optional hook
        """Optional data-dependent step before training (channel selection, sensitivity masks)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Optional loss term added to the task loss at every step."""
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:  # noqa: B027 - optional hook
        """Optional hook after each training epoch (pruning, rewinding)."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Re-parameterise the inserted modules into the backbone, in place; returns the model."""
        raise MethodError(f"method '{self.name}' has no re-parameterised (merged) form")

    @property
    def label(self) -> str:
        """The method's name, with the variant when it is not the published default (e.g. vpt_shallow):
        what run directories and tables call it."""
        return self.name

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a task checkpoint stores: every parameter that trains (the head included)."""
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def head_module(model: nn.Module) -> nn.Module:
    """The classifier of a timm model (a new task head, always trained)."""
    if not hasattr(model, "get_classifier"):
        raise MethodError(f"{type(model).__name__} is not a timm classifier (it has no get_classifier())")
    return model.get_classifier()


def head_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in head_module(model).parameters()}


def freeze_backbone(model: nn.Module) -> None:
    """Freeze every parameter except the classifier's."""
    head = head_parameter_ids(model)
    for p in model.parameters():
        p.requires_grad_(id(p) in head)


def backbone_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """(name, module) pairs of the model outside its classifier, the root excluded."""
    head = head_module(model)
    in_head = {id(m) for m in head.modules()}
    return [(n, m) for n, m in model.named_modules() if n and id(m) not in in_head]
