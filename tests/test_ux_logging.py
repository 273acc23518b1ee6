"""The default wandb logger: its run files written, its console lines not; a mode it lacks is one line."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

TINY_WANDB = ["dataset=digits", "backbone=vit_test", "epochs=1", "scheduler.warmup_epochs=0", "logger=wandb"]


def _env(tmp_path: Path, monkeypatch) -> dict:
    """WANDB_MODE unset, so the logger's own mode (offline) applies; wandb's other folders under tmp_path."""
    monkeypatch.delenv("WANDB_MODE")
    return {f"WANDB_{kind}_DIR": str(tmp_path / "wandb" / kind.lower())
            for kind in ("CACHE", "CONFIG", "DATA", "ARTIFACT")} | {"WANDB_DIR": str(tmp_path / "wandb")}


def test_offline_run_is_written_without_wandb_console_lines(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    out = run_cli("train.py", *TINY_WANDB, f"paths.runs={runs}", cwd=tmp_path, env=_env(tmp_path, monkeypatch))
    assert out.returncode == 0, out.stderr
    assert list(runs.glob("**/wandb/offline-run-*/run-*.wandb"))
    printed = (out.stdout + out.stderr).splitlines()
    assert not [line for line in printed if line.startswith("wandb:")]


def test_unknown_mode_is_one_line_naming_the_key(tmp_path, monkeypatch):
    out = run_cli("train.py", *TINY_WANDB, "logger.mode=bogus", f"paths.runs={tmp_path / 'runs'}", cwd=tmp_path,
                  env=_env(tmp_path, monkeypatch))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "logger.mode='bogus'" in lines[0] and "offline" in lines[0], out.stderr
