"""The table of method cases that `test_method_table.py` runs through the shared checks.

Each method's own test file (`tests/test_method_<name>.py`, and each technique's `tests/test_technique_<name>.py`
for its combinations) declares its rows as `CASES`; they are collected here, so adding a method is a row in its
own test file, never an edit of a shared list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

# vit_test: width D=64, 4 blocks, MLP 256, 8×8 patches on 32² (16 tokens + CLS); the table's tasks have 10 classes.
D, L, MLP, C, TOKENS = 64, 4, 256, 10, 17
HEAD = D * C + C


@dataclass(frozen=True)
class Case:
    """One configuration of a method (and its techniques), as config overrides.

    Args:
        overrides: what `train.py` would be given (`method=lora`, `method.variant=qv`, `memory=velora`).
        vit_b16: trainable parameters without the head at ViT-B/16 (100 classes), built on the meta device.
        tiny: the same on `backbone=vit_test` (10 classes).
        merges: the method folds into a plain timm model.
        identity_at_init: the adapted model computes exactly the pretrained one before training.
        disables: switching the inserted modules off gives the backbone (false where the method trains
            backbone tensors in place).
        backbones: other backbones (`swin`, `convnext`) → "" if the case attaches and trains there, else the
            start of its one-line refusal.
    """

    overrides: tuple[str, ...]
    vit_b16: int | None = None
    tiny: int | None = None
    merges: bool = False
    identity_at_init: bool = False
    disables: bool = True
    backbones: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return " ".join(self.overrides)


def collect() -> list[Case]:
    cases: list[Case] = []
    paths = [*Path(__file__).parent.glob("test_method_*.py"), *Path(__file__).parent.glob("test_technique_*.py")]
    for path in sorted(paths):
        if path.stem != "test_method_table":
            cases += importlib.import_module(f"tests.{path.stem}").CASES
    return cases
