"""Sweeps: all 19 VTAB-1k tasks, killed and rerun, locks between concurrent sweeps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.vtab import VTAB_TASKS
from runners.config import PROJECT_ROOT
from runners.locks import RunLock
from runners.results import benchmark_spec, build_results, load_runs, main_cells
from tests.conftest import run_cli
from tests.datasets import make_vtab_task

SWEEP = ["-m", "sweep=vtab", "method=linear", "backbone=vit_test", "logger=none", "epochs=2",
         "scheduler.warmup_epochs=0", "deterministic=true", "optimizer.lr=0.05"]


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory) -> Path:
    """A 19-task NOAH folder of tiny images; test lists cover every class (sun397's 397 included)."""
    root = tmp_path_factory.mktemp("vtab")
    for i, task in enumerate(VTAB_TASKS):
        sizes = {"train800": 16, "val200": 8, "test": max(12, task.num_classes)}
        make_vtab_task(root, task.name, task.num_classes, sizes=sizes, seed=i)
    return root


def sweep_args(root: Path, runs: Path, cache: Path) -> list[str]:
    return [*SWEEP, f"paths.data_dir={root}", f"paths.runs={runs}", f"paths.cache_dir={cache}"]


def table(runs: Path) -> list[list[str]]:
    bench = benchmark_spec("vtab")
    return main_cells(build_results(load_runs(runs), bench), decimals=4)


@pytest.fixture(scope="module")
def uninterrupted(vtab_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("straight") / "runs"
    out = run_cli("train.py", *sweep_args(vtab_root, runs, vtab_root / "cache"), cwd=vtab_root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep: 19 runs — 19 new" in out.stdout + out.stderr
    return runs


@pytest.mark.slow
def test_sweep_vtab_launches_19_jobs(uninterrupted):
    found = sorted(p.relative_to(uninterrupted).parts[1] for p in uninterrupted.rglob("metrics.json"))
    assert found == sorted(t.name for t in VTAB_TASKS)
    metrics = json.loads(next(uninterrupted.rglob("sun397/**/metrics.json")).read_text())
    assert metrics["num_classes"] == 397 and metrics["group"] == "Natural"


@pytest.mark.slow
def test_killed_sweep_reruns_exactly_the_unfinished_runs(vtab_root, uninterrupted, tmp_path):
    runs = tmp_path / "runs"
    args = [sys.executable, str(PROJECT_ROOT / "train.py"), *sweep_args(vtab_root, runs, vtab_root / "cache")]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ})
    deadline = time.time() + 240
    while len(list(runs.rglob("metrics.json"))) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.relative_to(runs).parts[1] for p in runs.rglob("metrics.json")}
    assert 6 <= len(done) < 19
    assert not [p for p in runs.rglob("metrics.json") if p.stat().st_size == 0]

    out = run_cli("train.py", *sweep_args(vtab_root, runs, vtab_root / "cache"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = re.search(r"sweep: 19 runs — (.*)", out.stdout + out.stderr).group(1)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (done before|resumed|new)", summary)}
    assert counts.get("done before") == len(done)
    assert counts.get("resumed", 0) + counts.get("new", 0) == 19 - len(done)
    assert table(runs) == table(uninterrupted)
    assert not list(runs.rglob(".lock")) and not list(runs.rglob("checkpoint.pt"))


def test_a_live_lock_is_respected_and_a_dead_one_taken_over(tmp_path, tiny_cfg):
    from runners import run

    cfg = tiny_cfg("method=linear")
    run_dir = Path(cfg.paths.run_dir)
    other = RunLock(run_dir)
    assert other.acquire()
    other.me = {**other.me, "pid": os.getppid()}  # held by a live process that is not this one
    (run_dir / ".lock").write_text(json.dumps(other.me))
    busy = run(cfg)
    assert busy.status == "busy" and not busy and not (run_dir / "metrics.json").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / ".lock").write_text(json.dumps({**other.me, "pid": int(dead.stdout)}))  # its holder has exited
    finished = run(cfg)
    assert finished.status == "new" and (run_dir / "metrics.json").exists() and not (run_dir / ".lock").exists()
    assert run(cfg).status == "done"

    (run_dir / ".lock").write_text(json.dumps(other.me))  # a finished run whose live holder has not let go yet
    assert run(cfg).status == "done" and (run_dir / ".lock").exists()
    (run_dir / ".lock").write_text(json.dumps({**other.me, "pid": int(dead.stdout)}))  # killed after metrics.json
    (run_dir / "checkpoint.pt").write_bytes(b"left behind")
    assert run(cfg).status == "done" and not (run_dir / ".lock").exists() and not (run_dir / "checkpoint.pt").exists()


def test_stale_lock_from_another_host_expires(tmp_path):
    lock = RunLock(tmp_path, stale_after=60)
    (tmp_path / ".lock").write_text(json.dumps({"host": "node-17", "pid": 1}))
    assert not lock.acquire()
    old = time.time() - 120
    os.utime(tmp_path / ".lock", (old, old))
    assert lock.acquire() and lock.holder()["host"] == lock.me["host"]
    lock.release()
    assert not (tmp_path / ".lock").exists()
