"""The one base of every module a method (or technique) inserts: peft's `BaseTunerLayer` idea.

A `Tuner` wraps the module it changes (`base`), so inserting it is `model.set_submodule(name, Tuner(...))`
and removing it puts `base` back. Every tuner can be switched off (`active = False`: the wrapped module
runs alone), and those whose maths allows fold into `base` (`merged()`). What a method saves is found by
type, never by name matching: the tuners' own tensors (parameters and buffers, `base` excluded) plus the
parameters left trainable.

Attribute reads fall through to `base`, so code that walks a timm model (`block.norm2`, `attn.num_heads`)
still works on a wrapped one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class NotMergeable(Exception):
    """A tuner whose output cannot be folded into the module it wraps."""


class Tuner(nn.Module):
    """Wraps `base`; subclasses implement `forward` (calling `self.base`) and, where exact, `merged()`."""

    mergeable: ClassVar[bool] = False

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.active = True

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(super().__getattr__("base"), name)

    def merged(self) -> nn.Module:
        """`base` with this tuner folded in (exact); the module that replaces the tuner in a merged model."""
        raise NotMergeable(type(self).__name__)

    def own_state(self) -> dict[str, torch.Tensor]:
        """This tuner's tensors (parameters and persistent buffers), without those of the module it wraps."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if not k.startswith("base.")}


def tuners(model: nn.Module) -> list[tuple[str, Tuner]]:
    """(name, tuner) of every tuner in `model`, outermost first."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Tuner)]


def _deepest_first(model: nn.Module) -> list[tuple[str, Tuner]]:
    return sorted(tuners(model), key=lambda item: item[0].count("."), reverse=True)


def set_active(model: nn.Module, active: bool) -> None:
    for _, tuner in tuners(model):
        tuner.active = active


def merge_tuners(model: nn.Module) -> nn.Module:
    """Replace every tuner by its `merged()` module, innermost first; raises `NotMergeable` before changing
    anything if one of them cannot fold."""
    for _, tuner in tuners(model):
        if not tuner.mergeable:
            raise NotMergeable(type(tuner).__name__)
    for name, tuner in _deepest_first(model):
        model.set_submodule(name, tuner.merged())
    return model


def detach_tuners(model: nn.Module) -> nn.Module:
    """Remove every tuner, putting back the module it wrapped (the model as it was before `attach`); a tuner at
    the root is unwrapped last and its `base` returned."""
    for name, tuner in _deepest_first(model):
        if name:
            model.set_submodule(name, tuner.base)
    return model.base if isinstance(model, Tuner) else model


def tuner_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tuner's own tensors, keyed by their names in `model`."""
    state = {}
    for name, tuner in tuners(model):
        for key, value in tuner.own_state().items():
            state[f"{name}.{key}" if name else key] = value
    return state
