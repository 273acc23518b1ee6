"""Experiment loggers: wandb (offline unless configured) or none. Selected by `logger=` in conf/."""

from __future__ import annotations

import os
import typing
from pathlib import Path

from runners.errors import UserError


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
    """Weights & Biases; files under `<run_dir>/wandb`. `WANDB_MODE` in the environment overrides `mode`.

    wandb's own console lines (banner, run history and summary, sync hints) are most of a run's output and
    repeat what the log says, so they are off unless `verbose`.
    """

    def __init__(self, project: str = "vpeft", entity: str | None = None, mode: str = "offline",
                 verbose: bool = False):
        _check_mode("logger.mode", mode)
        self.project, self.entity, self.mode, self.verbose = project, entity, mode, verbose
        self._run = None

    def start(self, run_dir: Path, name: str, config: dict) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", self.mode)
        _check_mode("WANDB_MODE", mode)
        self._run = wandb.init(project=self.project, entity=self.entity, name=name, config=config,
                               dir=str(run_dir), mode=mode, settings=wandb.Settings(silent=not self.verbose))

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


def _check_mode(key: str, mode: str) -> None:
    """A mode the installed wandb accepts (its Settings' `mode` field), else one line instead of its traceback."""
    import wandb

    modes = typing.get_args(wandb.Settings.model_fields["mode"].annotation)
    if mode not in modes:
        raise UserError(f"{key}={mode!r} is not one of {', '.join(modes)}; offline keeps the run local, "
                        f"online syncs it, disabled logs nothing")
