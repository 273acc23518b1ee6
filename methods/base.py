"""The method protocol every PEFT method implements, and the helpers they share.

A method changes a timm model in place: it inserts its modules (`Tuner`s, methods/tuners.py) and decides which
parameters train. It knows nothing about files, loggers or Hydra. The runner calls, in this order:

    attach(model, plan)                  insert modules, set requires_grad; with a saved plan, rebuild exactly
                                         (a method that wraps the whole model returns the new root)
    prepare(model, data, loss_fn) → plan only when no plan was saved: a data-dependent step that may create or
                                         unfreeze parameters; returns a small JSON-able plan (or None)
    [count params → optimizer → training: extra_loss(model, ctx) every step, on_epoch_end(model, ctx)]
    state(model) → task checkpoint;  merge(model) → a plain timm model where the maths allows

Techniques (methods/techniques/) follow the same hooks and compose with any method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from methods.tuners import NotMergeable, detach_tuners, merge_tuners, set_active, tuner_state, tuners


class MethodError(ValueError):
    """A method cannot be built or attached as configured (the message says what to change)."""


class DataPass(Protocol):
    """The task's training split in file order, normalised, without augmentation, on the model's device.

    `data(batch_size, max_batches)` yields (images, labels) batches; `num_classes` and `images` describe it.
    """

    num_classes: int
    images: int

    def __call__(self, batch_size: int, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepContext:
    """What `extra_loss` sees at a training step. `log(name, value)` records a device scalar, averaged over the
    epoch and logged as `train/<name>` (read once per epoch: no host synchronisation per step)."""

    epoch: int
    step: int
    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    loss_fn: LossFn
    log: Callable[[str, torch.Tensor], None]
    aux: dict = field(default_factory=dict)  # what the method's `training_forward` returned beside the logits


@dataclass
class EpochContext:
    """What `on_epoch_end` sees after epoch `epoch` (1-based) of `epochs`.

    `restart(plan=None)` rebuilds the optimizer (from the parameters trainable now) and the schedule over the
    remaining epochs, and, given a plan, makes it the run's plan (saved, and what a resumed run rebuilds):
    a rewind to a pruned configuration. `set_plan(plan)` only records a new plan (e.g. scores computed at the
    end of training). `data` and `loss_fn` are the run's training split and loss, as `prepare` gets them.
    """

    epoch: int
    epochs: int
    step: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    log: Callable[[str, float], None]
    restart: Callable[..., None]
    set_plan: Callable[[dict], None]
    data: DataPass
    loss_fn: LossFn


class Hooks:
    """The training-time hooks shared by methods and techniques (each optional)."""

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Named loss terms added to the task loss at every step (each logged as `train/<name>`)."""
        return {}

    def on_epoch_end(self, model: nn.Module, ctx: EpochContext) -> None:  # noqa: B027 - optional hook
        """After each training epoch (pruning, rewinding)."""


class Method(Hooks):
    """Base class: one subclass per PEFT method, registered by `name` (see `methods.register_method`).

    `prefix` starts the names of the parameters the method inserts (`ssf_scale`, `lora_A`, …); it is unique
    among methods, as in peft.
    """

    name: ClassVar[str]
    prefix: ClassVar[str]
    allocates_from_data: ClassVar[bool] = False  # what trains is decided by `prepare`, with no nominal plan
    # Evaluation computes on a data-dependent number of tokens: each batch would need its own compiled graph, so
    # `compile=` leaves evaluation eager.
    eval_shapes_depend_on_data: ClassVar[bool] = False

    def attach(self, model: nn.Module, plan: dict | None = None) -> nn.Module | None:
        """Insert the method's modules and set `requires_grad`, in place; with `plan` (from `prepare`), build
        exactly that configuration. A method that changes what the model computes as a whole (a side network)
        returns the new root, a `Tuner` wrapping `model`; the others return None."""
        raise NotImplementedError

    def training_forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training step's forward: (logits, aux); `aux` reaches `extra_loss` as `ctx.aux` (e.g. the token
        masks a dispatcher drew, read by a per-call tap)."""
        return model(x), {}

    def prepare(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> dict | None:
        """Optional data-dependent step after `attach` (channel selection, sensitivity); returns the plan."""
        return None

    def nominal_plan(self, model: nn.Module) -> dict | None:
        """A plan of the size the arguments fix, with placeholder content: for counting parameters and compute
        without data (scripts/count_params.py). None for a method without a data-dependent step."""
        return None

    def report(self, model: nn.Module) -> dict:
        """Method-specific figures for `metrics.json` (`method_report`): e.g. a budget's nominal and realised
        counts, the parameters surviving a pruning."""
        return {}

    @property
    def label(self) -> str:
        """The method's name, with the variant when it is not the published default (e.g. vpt_shallow):
        what run directories and tables call it."""
        return self.name

    def state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a task checkpoint stores: the inserted modules' own tensors (buffers such as masks included),
        every parameter that trains (the head, unfrozen backbone tensors)."""
        state = tuner_state(model)
        state.update({n: p for n, p in model.named_parameters() if p.requires_grad})
        return {k: v.detach() for k, v in state.items()}

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold every inserted module into the backbone, in place; returns the model (a plain timm model)."""
        try:
            return merge_tuners(model)
        except NotMergeable:
            raise MethodError(f"method '{self.name}' has no re-parameterised (merged) form") from None

    def mergeable(self, model: nn.Module) -> bool:
        """Whether `merge` can fold what this method inserted into `model`."""
        return all(t.mergeable for _, t in tuners(model))

    def disable(self, model: nn.Module) -> None:
        """Switch the inserted modules off: the model computes as the backbone it wraps."""
        set_active(model, False)

    def enable(self, model: nn.Module) -> None:
        set_active(model, True)

    def detach(self, model: nn.Module) -> nn.Module:
        """Remove the inserted modules, putting back what they wrapped."""
        return detach_tuners(model)

    def to_peft(self, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """The adapted model as an HF peft adapter: (LoraConfig-style keyword arguments, tensors keyed as peft
        saves them), or None where peft has no such tuner."""
        return None


def head_module(model: nn.Module) -> nn.Module:
    """The classifier of a timm model (a new task head, always trained)."""
    if not hasattr(model, "get_classifier"):
        raise MethodError(f"{type(model).__name__} is not a timm classifier (it has no get_classifier())")
    return model.get_classifier()


def head_name(model: nn.Module) -> str:
    """The classifier's module name in `model` (`head`, `head.fc`, …)."""
    head = head_module(model)
    return next(n for n, m in model.named_modules() if m is head)


def head_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in head_module(model).parameters()}


def head_state_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the classifier."""
    head = head_parameter_ids(model)
    return {n for n, p in model.named_parameters() if id(p) in head}


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


def require(condition: bool, message: str) -> None:
    """A method argument check: `MethodError(message)` unless `condition`."""
    if not condition:
        raise MethodError(message)


def choice(key: str, value: str, options: Iterable[str]) -> str:
    """`value` if it is one of `options`, else a one-line error naming the key and the options."""
    options = tuple(options)
    require(value in options, f"method.{key}={value} is not one of: {', '.join(options)}")
    return value
