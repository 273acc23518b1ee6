"""A sweep through hydra/launcher=slurm on a real one-node SLURM cluster gives the local sweep's results."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.config import PROJECT_ROOT
from tests.slurm_cluster import missing_programs, slurm_cluster

MISSING = missing_programs()

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(MISSING), reason=f"needs Debian's slurmctld, slurmd, slurm-client and munge packages "
                                             f"(not found: {', '.join(MISSING)})"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster runs its daemons and jobs as root"),
    pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                       reason="needs the slurm extra: make install-slurm"),
]

METHODS = ("linear", "bitfit", "ssf")
SWEEP = [f"method={','.join(METHODS)}", "dataset=digits", "backbone=vit_test", "epochs=1",
         "scheduler.warmup_epochs=0", "logger=none", "deterministic=true"]
# the tiny cluster: one partition, no GPUs, 2 cores; a job killed at 5 minutes cannot hang the test
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5"]
SWEEP_TIMEOUT_S = 240  # without accounting a dead job is never reported: this bounds the launcher's wait


@pytest.fixture
def cluster() -> Iterator[dict[str, str]]:
    with slurm_cluster() as env:
        yield env | {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def sweep(runs: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", *SWEEP, *extra, f"paths.runs={runs}"]
    return subprocess.run(cmd, cwd=runs.parent, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)


def top1s(runs: Path) -> dict[str, float]:
    found = {p.relative_to(runs).parts[2]: json.loads(p.read_text())["top1"] for p in runs.rglob("metrics.json")}
    assert sorted(found) == sorted(METHODS), found
    return found


@pytest.mark.slow
def test_slurm_sweep_matches_local_sweep(cluster, tmp_path):
    slurm_runs = tmp_path / "slurm"
    done = sweep(slurm_runs, *LAUNCHER, env=cluster)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "sweep: 3 runs — 3 new" in output, output

    # one array task per run, each with its sbatch script, log and result under the sweep's submitit folder
    tasks = sorted(p for p in (slurm_runs / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name))
    assert [t.name.split("_")[1] for t in tasks] == ["0", "1", "2"], tasks  # <array job id>_<task index>
    logs = "".join(p.read_text() for t in tasks for p in t.glob("*_log.*"))
    for method in METHODS:
        assert f"{method} on digits: top-1" in logs, logs
    assert all(list(t.glob("*_result.pkl")) for t in tasks), tasks

    local_runs = tmp_path / "local"
    done = sweep(local_runs, env=cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    assert top1s(slurm_runs) == top1s(local_runs)


@pytest.mark.slow
def test_a_failed_slurm_run_is_counted_and_the_other_finishes(cluster, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", "method=ssf", "optimizer.lr=1e-2,1e6",
           *SWEEP[1:], *LAUNCHER, f"paths.runs={runs}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=cluster, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert re.search(r"sweep: 2 runs — 1 new, 1 failed: \S+optimizer\.lr@1000000\.0\S*/seed42/train\.log", output)
    assert [json.loads(p.read_text())["config"]["optimizer"]["lr"] for p in runs.rglob("metrics.json")] == [0.01]
