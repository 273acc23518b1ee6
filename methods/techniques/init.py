"""`init=run` (and PVP's second stage): start a method's modules from another finished run's weights.

Before the first step of a new run, every tensor of the method's state (its inserted modules and the parameters
it trains) takes the source run's value; the task head keeps its fresh init unless `include_head`. The source
must be a run of the same method, and every tensor must be there with the same shape; otherwise the run stops
with one line naming the mismatch. The source's config hash is recorded in the run's provenance.

The source is any object with `load() -> (tensors, metadata)` (tensors as its `trainable.safetensors` holds
them, metadata with `method`, `label`, `config_hash`): `runners.sources.FinishedRun` reads a run folder,
`runners.sources.UpstreamRun` trains PVP's upstream stage first.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from methods.base import MethodError, head_state_keys
from methods.techniques import Adaptation, Technique


class Source(Protocol):
    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        ...


class FromRun(Technique):
    """Args:
    source: where the weights come from (see the module docstring).
    include_head: also copy the classifier (same number of classes).
    note: recorded in the provenance (PVP: what the re-implementation leaves open).
    """

    group = "init"

    def __init__(self, source: Source, include_head: bool = False, label: str = "init", note: str = ""):
        super().__init__(label)
        self.source, self.include_head, self.note = source, include_head, note
        self._meta: dict[str, str] = {}

    def initialise(self, model: nn.Module, adaptation: Adaptation) -> None:
        stored, meta = self.source.load()
        self._meta = meta
        method = adaptation.method
        if meta.get("method") != method.name:
            raise MethodError(f"init: {meta.get('where', 'the source run')} is a run of method "
                              f"'{meta.get('method')}', not '{method.name}'; start from a run of the same method")
        source = adaptation.restored(model, stored, training=True)
        head = head_state_keys(model)
        targets = {k: v for k, v in adaptation.state(model).items() if self.include_head or k not in head}
        for key, target in targets.items():
            if key not in source:
                raise MethodError(f"init: {meta.get('where', 'the source run')} has no tensor '{key}'; it was "
                                  f"trained with other method settings")
            if source[key].shape != target.shape:
                raise MethodError(f"init: '{key}' is {tuple(source[key].shape)} in {meta.get('where', 'the source')}"
                                  f" but {tuple(target.shape)} here; use the same method settings (and classes, "
                                  f"with include_head)")
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(source[key].to(target.device, target.dtype))

    def provenance(self) -> dict:
        return {"label": self.label, "include_head": self.include_head, **({"note": self.note} if self.note else {}),
                **{f"source_{k}": self._meta[k] for k in ("where", "label", "config_hash") if k in self._meta}}
