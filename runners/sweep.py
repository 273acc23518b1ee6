"""Sweeps: the task function's return value, failed runs that do not stop the others, and one summary line at
the end of a multirun.

In a multirun a run that fails (a user error, divergence, a crash) is logged — one line on the console, the
traceback of an unexpected error in the run's own log — and counted; the sweep goes on, and a rerun retries the
failed and unfinished runs only (they have no metrics.json). Each job records its status (done before / resumed /
new / busy elsewhere / failed, with its log) in a folder that the launching process names in
`VPEFT_SWEEP_STATUS`; jobs on SLURM inherit it with the rest of the environment. At the end, one line:
`sweep: 19 runs — 12 done before, 3 resumed, 3 new, 1 failed: <its log>`, and the process exits 1 if any failed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from runners.errors import describe

log = logging.getLogger(__name__)

ENV = "VPEFT_SWEEP_STATUS"
WORDS = {"done": "done before", "resumed": "resumed", "new": "new", "busy": "busy elsewhere", "failed": "failed"}


class RunResult(float):
    """Top-1 (what a sweeper optimises; NaN when there is none) carrying the run's status."""

    status: str
    log: str | None

    def __new__(cls, top1: float, status: str, log: str | None = None) -> RunResult:
        value = super().__new__(cls, top1)
        value.status, value.log = status, log
        return value

    def __reduce__(self):
        return RunResult, (float(self), self.status, self.log)


def _job_log() -> Path | None:
    """The file Hydra's job logging writes this run's log to."""
    return next((Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)),
                None)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(job: Callable[[], RunResult]) -> RunResult:
    """`job()` as one run of a multirun: a failure is logged and returned as a `failed` result, so the other runs
    go on. Outside a multirun (and for Ctrl-C/SIGTERM) the exception propagates."""
    if not in_multirun():
        return job()
    try:
        return job()
    except Exception as exc:
        path = _job_log()
        line = describe(exc)
        if line is None:  # a bug or a crash: its traceback belongs in the run's log
            line = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if path is not None:
                with open(path, "a") as f:
                    f.write(traceback.format_exc())
        log.error("failed: %s", line)
        return RunResult(float("nan"), "failed", str(path) if path else None)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.paths.runs) / ".sweeps" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[ENV] = str(folder)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        folder = os.environ.get(ENV)
        if not folder or not Path(folder).is_dir():
            return
        status, log_path = "failed", None
        if job_return.status == JobStatus.COMPLETED:
            status = getattr(job_return.return_value, "status", "new")
            log_path = getattr(job_return.return_value, "log", None)
        (Path(folder) / f"{config.hydra.job.num}.json").write_text(json.dumps({"status": status, "log": log_path}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(os.environ.pop(ENV, ""))
        if not folder.name or not folder.is_dir():
            return
        jobs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        shutil.rmtree(folder, ignore_errors=True)
        counts = Counter(job["status"] for job in jobs)
        parts = [f"{counts[key]} {word}" for key, word in WORDS.items() if counts[key]]
        logs = [job["log"] for job in jobs if job["status"] == "failed" and job.get("log")]
        shown = f": {', '.join(logs[:3])}{' …' if len(logs) > 3 else ''}" if logs else ""
        log.info("sweep: %d runs — %s%s", len(jobs), ", ".join(parts) or "none recorded", shown)
        global failed_runs
        failed_runs = counts["failed"]


failed_runs = 0  # failed runs of the last multirun in this process: train.py exits 1 when there are any
