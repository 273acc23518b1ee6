"""Experiment loggers: wandb (offline unless configured) or none. Selected by `logger=` in conf/."""

from __future__ import annotations

import os
from pathlib import Path


class NullLogger:
    def start(self, run_dir: Path, name: str, config: dict) -> None:
        pass

    def log(self, values: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """Weights & Biases; files under `<run_dir>/wandb`. `WANDB_MODE` in the environment overrides `mode`."""

    def __init__(self, project: str = "vpeft", entity: str | None = None, mode: str = "offline"):
        self.project, self.entity, self.mode = project, entity, mode
        self._run = None

    def start(self, run_dir: Path, name: str, config: dict) -> None:
        import wandb

        self._run = wandb.init(project=self.project, entity=self.entity, name=name, config=config,
                               dir=str(run_dir), mode=os.environ.get("WANDB_MODE", self.mode))

    def log(self, values: dict, step: int) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def summary(self, values: dict) -> None:
        if self._run is not None:
            self._run.summary.update({k: v for k, v in values.items() if isinstance(v, int | float | str)})

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
