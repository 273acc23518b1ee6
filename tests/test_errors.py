"""Every failure a user can cause, through the real entry point: exit code 2, exactly one line on stderr that names
the key or file, no traceback, and no half-written file left in the run folder. Interrupts: one line, 130/143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from methods import list_methods
from runners import compose
from runners.config import PROJECT_ROOT
from tests.conftest import run_cli
from tests.datasets import make_vtab_task

BASE = ["backbone=vit_test", "logger=none", "epochs=1", "scheduler.warmup_epochs=0"]


def tmpfs(stack: ExitStack, path: Path, size: str, readonly: bool = False) -> Path:
    """A small tmpfs at `path` for the test's duration (a full disk, a read-only folder); root only."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    stack.callback(subprocess.run, ["umount", "-l", str(path)], capture_output=True)
    if readonly:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    return path


def run_dir_of(tmp: Path, *overrides: str) -> Path:
    return Path(compose([*BASE, f"paths.runs={tmp / 'runs'}", *overrides]).paths.run_dir)


def damaged(name: str, *overrides: str) -> Callable[[Path, ExitStack], list[str]]:
    def setup(tmp: Path, stack: ExitStack) -> list[str]:
        folder = run_dir_of(tmp, *overrides)
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"\x80garbage")
        return list(overrides)

    return setup


def vtab(tmp: Path, stack: ExitStack) -> list[str]:
    make_vtab_task(tmp / "data", "kitti", 4)
    return ["dataset=vtab/kitti", f"paths.data_dir={tmp / 'data'}", f"paths.cache_dir={tmp / 'cache'}"]


def corrupt_image(tmp: Path, stack: ExitStack) -> list[str]:
    args = vtab(tmp, stack)
    bad = tmp / "data/vtab-1k/kitti/images/test/000002.png"
    bad.write_bytes(bad.read_bytes()[:40])
    return args


def full_runs_disk(tmp: Path, stack: ExitStack) -> list[str]:  # config and plan fit, the checkpoint does not
    return ["method=full", f"paths.runs={tmpfs(stack, tmp / 'small', '256k') / 'runs'}"]


def read_only_runs(tmp: Path, stack: ExitStack) -> list[str]:
    return [f"paths.runs={tmpfs(stack, tmp / 'ro', '1m', readonly=True) / 'runs'}"]


def full_cache_disk(tmp: Path, stack: ExitStack) -> list[str]:  # the decoded split needs more than there is
    return [*vtab(tmp, stack), f"paths.cache_dir={tmpfs(stack, tmp / 'small', '32k')}"]


def read_only_cache(tmp: Path, stack: ExitStack) -> list[str]:
    return [*vtab(tmp, stack), f"paths.cache_dir={tmpfs(stack, tmp / 'ro', '1m', readonly=True)}"]


def no_cxx_compiler(tmp: Path, stack: ExitStack) -> list[str]:  # inductor needs one to compile for the CPU
    stack.enter_context(pytest.MonkeyPatch.context()).setenv("CXX", str(tmp / "no-g++"))
    return ["compile=default", f"paths.cache_dir={tmp / 'cache'}"]


@dataclass
class Case:
    args: list[str] | Callable[[Path, ExitStack], list[str]]
    message: str  # a fragment of the line; {tmp} is the test's folder
    names: list[str] = field(default_factory=list)  # further fragments the line must hold


CASES = {
    # choices and keys
    "unknown method": Case(["method=sft"], f"unknown method 'sft'; choose one of: {', '.join(list_methods())}"),
    "unknown dataset": Case(["dataset=mnist"], "unknown dataset 'mnist'; choose one of: digits, digits_rotation, "
                                               "digits_source, digits_target, fewshot/fgvc_aircraft"),
    "private base": Case(["dataset=vtab/_vtab"], "unknown dataset 'vtab/_vtab' (a shared base, not an option)",
                         ["vtab/cifar"]),
    "unknown backbone": Case(["backbone=vit_huge"], "unknown backbone 'vit_huge'; choose one of:"),
    "unknown protocol": Case(["protocol=test"], "unknown protocol 'test'; choose one of: final, tune"),
    "bad type": Case(["epochs=ten"], "'ten' of type 'str' could not be converted to Integer"),
    "misspelt key": Case(["epoch=3"], "unknown key 'epoch' (did you mean 'epochs'?)"),
    "misspelt nested key": Case(["optimizer.lrr=3"], "unknown key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
    "key added with +": Case(["+epoch=5"], "+epoch=5: 'epoch' is not a key of this config (did you mean 'epochs'?)"),
    "run name leaving the runs folder": Case(["run_name=../../../x"], "run folder piece '../../../x' would leave "
                                                                      "paths.runs"),
    "bad logger mode": Case(["logger=wandb", "logger.mode=bogus"], "logger.mode"),
    "compile mode": Case(["compile=fast"], "compile=fast is not one of: none, default, reduce-overhead, max-autotune"),
    # ranges
    "batch size 0": Case(["batch_size=0"], "batch_size=0 is out of range: it must be ≥ 1"),
    "eval batch size 0": Case(["eval_batch_size=0"], "eval_batch_size=0 is out of range"),
    "zero epochs": Case(["epochs=0"], "epochs=0 is out of range: it must be ≥ 1"),
    "negative epochs": Case(["epochs=-1"], "epochs=-1 is out of range"),
    "label smoothing 2": Case(["label_smoothing=2"], "label_smoothing=2.0 is out of range: it must be in [0, 1)"),
    "drop path 1.5": Case(["drop_path=1.5"], "drop_path=1.5 is out of range"),
    "negative seed": Case(["seed=-1"], "seed=-1 is out of range"),
    "negative grad clip": Case(["grad_clip=-1"], "grad_clip=-1.0 is out of range: it must be > 0, or null for none"),
    "non-numeric lr": Case(["optimizer.lr=fast"], "optimizer.lr='fast' is out of range: it must be a number > 0"),
    # method arguments, checked where the method declares them
    "vpt mode": Case(["method=vpt", "method.mode=middle"], "method.mode=middle is not one of: shallow, deep"),
    "adapter placement": Case(["method=adapter", "method.placement=x"], "method.placement=x is not one of"),
    "lora rank 0": Case(["method=lora", "method.rank=0"], "method.rank=0 must be at least 1"),
    "no prompts": Case(["method=vpt", "method.prompt_length=0"], "method.prompt_length=0 must be at least 1"),
    # training that fails is not a result
    "divergence": Case(["optimizer.lr=1e6"], "training diverged in epoch 1/1 (loss nan); lower optimizer.lr"),
    "no compiler for compile=": Case(no_cxx_compiler, "torch.compile (compile=default) failed: InvalidCxxCompiler",
                                     ["{tmp}/no-g++", "rerun with compile=none"]),
    # files
    "missing checkpoint": Case(["backbone.checkpoint=/nowhere/ViT-B_16.npz"],
                               "backbone checkpoint /nowhere/ViT-B_16.npz does not exist; fix backbone.checkpoint="),
    "missing data folder": Case(["dataset=vtab/kitti", "paths.data_dir={tmp}/none"],
                                "{tmp}/none/vtab-1k/kitti does not exist", ["prepare_vtab.py"]),
    "corrupt image": Case(corrupt_image, "image {tmp}/data/vtab-1k/kitti/images/test/000002.png is corrupt",
                          ["data.skip_corrupt=true"]),
    "damaged checkpoint": Case(damaged("checkpoint.pt"), "checkpoint.pt is damaged", ["force=true"]),
    "damaged metrics": Case(damaged("metrics.json", "method=linear"), "metrics.json is damaged", ["force=true"]),
    "damaged plan": Case(damaged("plan.json"), "plan.json is damaged", ["force=true"]),
    "full disk at the checkpoint": Case(full_runs_disk, "checkpoint.pt: No space left on device", ["paths.runs"]),
    "read-only runs folder": Case(read_only_runs, "Read-only file system", ["paths.runs"]),
    "full disk at the decode cache": Case(full_cache_disk, "not enough space in {tmp}/small/decoded",
                                          ["data.cache_dir="]),
    "read-only decode cache": Case(read_only_cache, "cannot write the decode cache in {tmp}/ro/decoded",
                                   ["data.cache_dir="]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_exit_2(case, tmp_path):
    spec = CASES[case]
    with ExitStack() as stack:
        args = spec.args(tmp_path, stack) if callable(spec.args) else [a.format(tmp=tmp_path) for a in spec.args]
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        out = run_cli("train.py", *BASE, f"paths.runs={tmp_path / 'runs'}", *args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stdout + out.stderr, out.stderr
        for fragment in (spec.message, *spec.names):
            assert fragment.format(tmp=tmp_path) in lines[0], lines[0]
        assert lines[0].startswith("error: ")
        written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in before]
        assert not [p for p in written if p.name in ("metrics.json", "checkpoint.pt", "trainable.safetensors")
                    or p.name.endswith(".tmp")], written
        assert all(p.read_bytes() == data for p, data in before.items())  # nothing of the user's changed or removed
    assert not (tmp_path.parent / "x").exists()


def test_hub_weights_unreachable_says_which_override_fixes_it(tmp_path):
    out = run_cli("train.py", "backbone=vit_b16_in21k", "logger=none", f"paths.runs={tmp_path}", cwd=tmp_path,
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "backbone.checkpoint=" in lines[0] and "vit_base_patch16_224.orig_in21k" in lines[0]


RESUMABLE = [*BASE[:2], "method=ssf", "epochs=12", "drop_path=0.1", "deterministic=true", "scheduler.warmup_epochs=1"]


def _start(runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *RESUMABLE, f"paths.runs={runs}"],
                            cwd=runs.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled"})


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, epoch: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = run_dir / "checkpoint.pt"
        try:
            if path.exists() and torch.load(path, weights_only=True)["epoch"] >= epoch:
                return
        except (RuntimeError, EOFError, FileNotFoundError):
            pass  # being replaced right now
        time.sleep(0.05)
    raise AssertionError("the run ended or stalled before its checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupt_then_rerun_ends_exactly_as_an_uninterrupted_run(how, tmp_path):
    straight = tmp_path / "straight" / "runs"
    straight.parent.mkdir()
    assert run_cli("train.py", *RESUMABLE, f"paths.runs={straight}", cwd=tmp_path).returncode == 0

    runs = tmp_path / "stopped" / "runs"
    runs.parent.mkdir()
    run_dir = Path(compose([*RESUMABLE, f"paths.runs={runs}"]).paths.run_dir)
    proc = _start(runs)
    _wait_for_checkpoint(proc, run_dir, 2)
    proc.send_signal(getattr(signal, how))
    _, stderr = proc.communicate(timeout=60)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[how], stderr
        (line,) = stderr.strip().splitlines()
        assert line.startswith("interrupted at epoch ") and line.endswith("; rerun the same command to resume")
        assert str(run_dir) in line
        assert not (run_dir / ".lock").exists()  # released on the way out
    assert not (run_dir / "metrics.json").exists()

    again = run_cli("train.py", *RESUMABLE, f"paths.runs={runs}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a = load_file(next(straight.rglob("trainable.safetensors")))
    b = load_file(run_dir / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(runs.rglob(".*.tmp")) and not (run_dir / "checkpoint.pt").exists()
