"""Shared fixtures: configs composed through the same tree as train.py, shrunk to the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners import compose, run
from runners.config import PROJECT_ROOT

TINY = ["dataset=digits", "backbone=vit_test", "logger=none", "epochs=2", "scheduler.warmup_epochs=1"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose(overrides) for the tiny model on digits, 2 epochs, runs under tmp_path."""

    def make(*overrides: str):
        return compose([*TINY, f"paths.runs={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture
def tiny_run(tiny_cfg):
    def go(*overrides: str) -> dict:
        return run(tiny_cfg(*overrides))

    return go


@pytest.fixture(scope="session")
def demo_backbone(tmp_path_factory) -> Path:
    """The demo's tiny ViT, pre-trained on digit rotations (as `make demo` does), once per session."""
    from scripts.demo import pretrained_backbone

    os.environ.setdefault("WANDB_MODE", "disabled")
    return pretrained_backbone(tmp_path_factory.mktemp("demo"))


def run_cli(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a project command line (`train.py`, `scripts/...`) in a fresh interpreter from another folder."""
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)
