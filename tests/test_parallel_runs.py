"""Several runs at once (hydra/launcher=parallel): each run keeps its lock and resume, and ends as it would alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runners import compose
from runners.locks import RunLock
from tests.conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                       reason="needs the parallel extra (hydra-joblib-launcher): make install"),
]

SWEEP = ["dataset=digits", "backbone=vit_test", "logger=none", "epochs=2", "scheduler.warmup_epochs=1"]
PARALLEL = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
# one thread per run, alone or side by side: float sums split over other thread counts differ in the last bits
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _sweep(tmp_path: Path, runs: str, *extra: str) -> dict[int, Path]:
    """`train.py -m ... seed=1,2` with its runs under `tmp_path/runs`; the two run folders."""
    result = run_cli("train.py", "-m", *SWEEP, "seed=1,2", f"paths.runs={tmp_path / runs}", *extra, cwd=tmp_path,
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return {seed: Path(compose([*SWEEP, f"seed={seed}", f"paths.runs={tmp_path / runs}"]).paths.run_dir)
            for seed in (1, 2)}


def test_two_runs_at_once_equal_one_after_another(tmp_path):
    folder = Path(compose([*SWEEP, "seed=1", f"paths.runs={tmp_path / 'parallel'}"]).paths.run_dir)
    held = RunLock(folder)  # another live process (this one) holds seed 1: the parallel sweep leaves it alone
    assert held.acquire()
    try:
        parallel = _sweep(tmp_path, "parallel", *PARALLEL)
    finally:
        held.release()
    assert not (parallel[1] / "metrics.json").exists() and (parallel[2] / "metrics.json").exists()
    finished = (parallel[2] / "metrics.json").stat().st_mtime_ns
    _sweep(tmp_path, "parallel", *PARALLEL)  # the rerun runs seed 1 and skips seed 2
    assert (parallel[1] / "metrics.json").exists() and (parallel[2] / "metrics.json").stat().st_mtime_ns == finished
    sequential = _sweep(tmp_path, "sequential")

    for seed in (1, 2):
        metrics = [json.loads((d[seed] / "metrics.json").read_text()) for d in (parallel, sequential)]
        assert metrics[0]["top1"] == metrics[1]["top1"]
        weights = [load_file(d[seed] / "trainable.safetensors") for d in (parallel, sequential)]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), f"seed {seed}"
