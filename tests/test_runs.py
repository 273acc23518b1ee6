"""Run directories, skipping finished runs, protocols, intermediate evaluations, the entry point, wandb."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from runners import run
from tests.conftest import run_cli


def test_finished_run_is_skipped_unless_forced(tiny_cfg, caplog):
    cfg = tiny_cfg("method=linear")
    first = run(cfg)
    metrics = Path(cfg.paths.run_dir) / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="runners.run"):
        again = run(cfg)
    assert again == json.loads(metrics.read_text()) and again["top1"] == first["top1"]
    assert metrics.stat().st_mtime_ns == stamp
    assert [r.message for r in caplog.records if r.message.startswith("skipped")] == [
        f"skipped: {cfg.paths.run_dir} already has metrics.json"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runners.run"):
        run(tiny_cfg("method=linear", "optimizer.lr=0.05"))  # same directory, other config: said so
    assert any("differs from this one" in r.message and "run_name=" in r.message for r in caplog.records)

    run(tiny_cfg("method=linear", "force=true"))
    assert metrics.stat().st_mtime_ns != stamp


def test_tune_protocol_trains_on_train800_and_evaluates_val200(tiny_run):
    metrics = tiny_run("method=linear", "protocol=tune")
    assert metrics["provenance"]["train_split"] == "train800" and metrics["provenance"]["train_images"] == 800
    assert metrics["provenance"]["eval_split"] == "val200" and metrics["provenance"]["eval_images"] == 200
    assert Path(metrics["config"]["paths"]["run_dir"]).name == "tune-seed42"


def test_eval_every_adds_a_curve_but_reports_the_final_epoch(tiny_run):
    metrics = tiny_run("method=linear", "epochs=4", "eval_every=1", "optimizer.lr=0.05")
    assert [p["epoch"] for p in metrics["top1_curve"]] == [1, 2, 3, 4]
    assert metrics["top1"] == metrics["top1_curve"][-1]["top1"]
    assert metrics["top1_best_over_evaluations"] == max(p["top1"] for p in metrics["top1_curve"])
    assert metrics["provenance"]["selection"] == "final epoch"


def test_train_py_single_run_and_multirun_from_another_folder(tmp_path):
    runs = tmp_path / "runs"
    common = ["dataset=digits", "backbone=vit_test", "logger=none", "epochs=1", "scheduler.warmup_epochs=0",
              f"paths.runs={runs}"]
    out = run_cli("train.py", "method=bitfit", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (runs / "digits/digits/bitfit/vit_test/seed42/metrics.json").exists()

    out = run_cli("train.py", "-m", "method=bitfit,linear", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout + out.stderr  # bitfit was done above
    assert sorted(p.parts[-4] for p in runs.rglob("metrics.json")) == ["bitfit", "linear"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_wandb_offline_run_is_written_under_the_run_dir(tiny_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    cfg = tiny_cfg("method=linear", "epochs=1", "logger=wandb", "logger.mode=offline")
    run(cfg)
    offline = list((Path(cfg.paths.run_dir) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_config_hash_ignores_where_things_are_kept(tiny_cfg):
    from runners.config import config_hash

    base = config_hash(tiny_cfg("method=linear"))
    assert config_hash(tiny_cfg("method=linear", "paths.cache_dir=/elsewhere", "data.decode_workers=7",
                                "logger=wandb", "device=cpu")) == base
    assert config_hash(tiny_cfg("method=linear", "data.skip_corrupt=true")) != base
    assert config_hash(tiny_cfg("method=linear", "optimizer.lr=0.5")) != base
