"""Techniques: ways to change any method, each in its own config group, composed in a fixed order.

    memory=   how much activation memory training keeps (VeLoRA)
    quant=    how many bits a task's modules take on disk (1-bit adapters)
    init=     where the modules' initial weights come from (another run; PVP's pre-trained modules)

A technique has the method's training hooks (`extra_loss`, `on_epoch_end`) and three of its own:
`apply(model, method)` after the method is attached (structure: wrappers, parametrisations; also when a
finished run is rebuilt), `initialise(model, adaptation)` once, before the first step of a new run (weights), and
`stored` / `restored` between the training state and what `trainable.safetensors` holds.

`Adaptation` is a method and its techniques as the runner uses them; the runner never names either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from methods.base import DataPass, Hooks, LossFn, Method, MethodError

GROUPS = ("memory", "quant", "init")  # the order techniques are applied in


class Technique(Hooks):
    """Base class. `label` is what the run's method label gains (`lora+velora`)."""

    group: ClassVar[str]

    def __init__(self, label: str):
        self.label = label

    def apply(self, model: nn.Module, method: Method) -> None:  # noqa: B027 - optional hook
        """Change the adapted model's structure (every time the model is built)."""

    def initialise(self, model: nn.Module, adaptation: Adaptation) -> None:  # noqa: B027 - optional hook
        """Set initial weights, once, before the first training step of a new run."""

    def provenance(self) -> dict:
        """What `metrics.json` records about this technique (read when the run starts)."""
        return {"label": self.label}

    def finalise(self, model: nn.Module) -> None:  # noqa: B027 - optional hook
        """Turn the model into its deployed form before the method merges (e.g. bake quantised weights in)."""

    def stored(self, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task checkpoint's tensors from the training state (e.g. packed bits instead of latent weights)."""
        return state

    def restored(self, model: nn.Module, stored: dict[str, torch.Tensor], training: bool = False
                 ) -> dict[str, torch.Tensor]:
        """The inverse of `stored`: the state to load into a rebuilt model (which it may turn into its deployed form,
        e.g. dequantised weights), or, with `training`, the training state to start from (init=run)."""
        return stored


@dataclass
class Adaptation:
    """A method with its techniques: what the runner attaches, trains, saves and rebuilds."""

    method: Method
    techniques: Sequence[Technique] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        seen: dict[str, Technique] = {}
        for technique in self.techniques:
            if technique.group in seen:
                raise MethodError(f"two {technique.group} techniques: {seen[technique.group].label} and "
                                  f"{technique.label}")
            seen[technique.group] = technique
        self.techniques = sorted(self.techniques, key=lambda t: GROUPS.index(t.group))

    @property
    def label(self) -> str:
        return "+".join([self.method.label, *(t.label for t in self.techniques)])

    @property
    def hooks(self) -> list[Hooks]:
        return [self.method, *self.techniques]

    def build(self, model: nn.Module, plan: dict | None = None, data: DataPass | None = None,
              loss_fn: LossFn | None = None) -> tuple[nn.Module, dict | None]:
        """Attach the method (rebuilding `plan` when given, else running its data-dependent `prepare` on
        `data`), then apply the techniques; returns the adapted model (a new root where the method wraps the
        whole model) and the plan."""
        model = self.method.attach(model, plan) or model
        if plan is None and data is not None:
            plan = self.method.prepare(model, data, loss_fn)
        for technique in self.techniques:
            technique.apply(model, self.method)
        return model, plan

    def initialise(self, model: nn.Module) -> None:
        for technique in self.techniques:
            technique.initialise(model, self)

    def state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The training state (what a resume checkpoint holds)."""
        return self.method.state(model)

    def stored(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The task checkpoint: the training state as each technique stores it."""
        state = self.state(model)
        for technique in self.techniques:
            state = technique.stored(model, state)
        return state

    def restored(self, model: nn.Module, stored: dict[str, torch.Tensor], training: bool = False
                 ) -> dict[str, torch.Tensor]:
        for technique in reversed(self.techniques):
            stored = technique.restored(model, stored, training)
        return stored

    def provenance(self) -> dict:
        return {t.group: t.provenance() for t in self.techniques}

    def mergeable(self, model: nn.Module) -> bool:
        return self.method.mergeable(model)

    def merge(self, model: nn.Module) -> nn.Module:
        """The deployed model: each technique's final form, then the method folded into the backbone."""
        if not self.mergeable(model):
            return self.method.merge(model)  # the method's one-line reason
        for technique in self.techniques:
            technique.finalise(model)
        return self.method.merge(model)


__all__ = ["GROUPS", "Adaptation", "Technique"]
