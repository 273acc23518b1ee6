"""Sweeps: the task function's return value, and one summary line at the end of a multirun.

Each job records its status (done before / resumed / new / busy elsewhere / failed) in a folder that the
launching process names in `VPEFT_SWEEP_STATUS`; jobs on SLURM inherit it with the rest of the
environment. At the end, one line: `sweep: 19 runs — 12 done before, 3 resumed, 4 new`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ENV = "VPEFT_SWEEP_STATUS"
WORDS = {"done": "done before", "resumed": "resumed", "new": "new", "busy": "busy elsewhere", "failed": "failed"}


class RunResult(float):
    """Top-1 (what a sweeper optimises; NaN when there is none) carrying the run's status."""

    status: str

    def __new__(cls, top1: float, status: str) -> RunResult:
        value = super().__new__(cls, top1)
        value.status = status
        return value

    def __reduce__(self):
        return RunResult, (float(self), self.status)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.paths.runs) / ".sweeps" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[ENV] = str(folder)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        folder = os.environ.get(ENV)
        if not folder or not Path(folder).is_dir():
            return
        status = "failed"
        if job_return.status == JobStatus.COMPLETED:
            status = getattr(job_return.return_value, "status", "new")
        (Path(folder) / f"{config.hydra.job.num}.json").write_text(json.dumps({"status": status}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(os.environ.pop(ENV, ""))
        if not folder.name or not folder.is_dir():
            return
        counts = Counter(json.loads(p.read_text())["status"] for p in folder.glob("*.json"))
        shutil.rmtree(folder, ignore_errors=True)
        parts = [f"{counts[key]} {word}" for key, word in WORDS.items() if counts[key]]
        log.info("sweep: %d runs — %s", sum(counts.values()), ", ".join(parts) or "none recorded")
