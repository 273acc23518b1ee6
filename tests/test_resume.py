"""Checkpoints: an interrupted run, rerun with the same command, ends exactly as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runners import run
from runners.trainer import Trainer

# drop-path draws from the global RNG and the loader reshuffles every epoch: both must resume exactly
RESUMABLE = ("method=ssf", "epochs=4", "drop_path=0.1", "deterministic=true")


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tiny_cfg, monkeypatch, tmp_path):
    straight = run(tiny_cfg(*RESUMABLE, f"paths.runs={tmp_path / 'straight'}"))

    cfg = tiny_cfg(*RESUMABLE, f"paths.runs={tmp_path / 'interrupted'}")
    run_dir = Path(cfg.paths.run_dir)
    save = Trainer._save_checkpoint

    def save_then_stop(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 2:
            raise Interrupted

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        run(cfg)
    assert (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".*.tmp"))  # no half-written file left behind
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 2

    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    resumed = run(cfg)
    assert resumed["top1"] == straight["top1"]
    assert resumed["top1_curve"] == straight["top1_curve"]
    assert len(resumed["train_epoch_seconds"]) == len(straight["train_epoch_seconds"]) == resumed["epochs"]
    assert resumed["train_seconds"] == pytest.approx(sum(resumed["train_epoch_seconds"]))
    a = load_file(Path(straight["config"]["paths"]["run_dir"]) / "trainable.safetensors")
    b = load_file(run_dir / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run_dir / "checkpoint.pt").exists()


def test_checkpoint_of_another_config_is_refused(tiny_cfg, monkeypatch):
    from runners.errors import UserError

    cfg = tiny_cfg("method=ssf", "epochs=3")
    save = Trainer._save_checkpoint

    def stop(self, epoch, *args):
        save(self, epoch, *args)
        raise Interrupted

    monkeypatch.setattr(Trainer, "_save_checkpoint", stop)
    with pytest.raises(Interrupted):
        run(cfg)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    other = tiny_cfg("method=ssf", "epochs=3")
    other.optimizer.lr = 0.01  # the same folder with another config (a recipe edited since)
    with pytest.raises(UserError, match="another config"):
        run(other)
    other.force = True
    assert run(other)["config"]["optimizer"]["lr"] == 0.01


def test_crash_at_evaluation_resumes_once_fixed(tiny_cfg, monkeypatch):
    """Training finished, evaluation failed (say, out of memory at eval_batch_size=256): the rerun with a smaller
    eval_batch_size uses the same folder and checkpoint, and only evaluates."""
    cfg = tiny_cfg("method=ssf", "epochs=2")

    def out_of_memory(self, model=None):
        raise MemoryError("eval batch too large")

    monkeypatch.setattr(Trainer, "evaluate", out_of_memory)
    with pytest.raises(MemoryError):
        run(cfg)
    assert torch.load(Path(cfg.paths.run_dir) / "checkpoint.pt", weights_only=True)["epoch"] == 2
    monkeypatch.undo()

    fixed = tiny_cfg("method=ssf", "epochs=2", "eval_batch_size=8")
    assert fixed.paths.run_dir == cfg.paths.run_dir
    outcome = run(fixed)
    assert outcome.status == "resumed" and outcome["train_seconds"] > 0
    assert not (Path(cfg.paths.run_dir) / "checkpoint.pt").exists()
