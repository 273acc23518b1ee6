"""Run directories, skipping finished runs, protocols, intermediate evaluations, the entry point, wandb."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from runners import compose, run
from runners.config import PROJECT_ROOT
from tests.conftest import run_cli


def test_finished_run_is_skipped_unless_forced(tiny_cfg, caplog):
    cfg = tiny_cfg("method=linear")
    first = run(cfg)
    metrics = Path(cfg.paths.run_dir) / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="runners.job"):
        again = run(cfg)
    assert again == json.loads(metrics.read_text()) and again["top1"] == first["top1"]
    assert metrics.stat().st_mtime_ns == stamp
    assert [r.message for r in caplog.records if r.message.startswith("skipped")] == [
        f"skipped: {cfg.paths.run_dir} already has metrics.json"]

    other = tiny_cfg("method=linear", "optimizer.lr=0.05")  # another hyper-parameter: another folder, a new run
    assert Path(other.paths.run_dir).parent.name.startswith("epochs@2+optimizer.lr@0.05+scheduler.warmup_epochs@1-")
    assert run(other)["config"]["optimizer"]["lr"] == 0.05

    caplog.clear()
    cfg.optimizer.lr = 0.5  # the same folder with another config (a recipe edited since): said so, not rerun
    with caplog.at_level(logging.INFO, logger="runners.job"):
        assert run(cfg)["top1"] == first["top1"]
    assert any("differs from this one" in r.message and "run_name=" in r.message for r in caplog.records)

    run(tiny_cfg("method=linear", "force=true"))
    assert metrics.stat().st_mtime_ns != stamp


def test_tune_protocol_trains_on_train800_and_evaluates_val200(tiny_run):
    metrics = tiny_run("method=linear", "protocol=tune")
    assert metrics["provenance"]["train_split"] == "train800" and metrics["provenance"]["train_images"] == 800
    assert metrics["provenance"]["eval_split"] == "val200" and metrics["provenance"]["eval_images"] == 200
    assert Path(metrics["config"]["paths"]["run_dir"]).name == "tune-seed42"


def test_hyper_parameter_folder(tiny_cfg):
    """Only overrides that change the result and are not path pieces name the folder; equal values, one folder."""
    def level(*overrides: str) -> str:
        cfg = tiny_cfg(*overrides)
        return Path(cfg.paths.run_dir).relative_to(cfg.paths.runs).parts[4]

    assert level("optimizer.lr=1e-2") == level("optimizer.lr=0.01") != level("optimizer.lr=0.02")
    assert level() == level("eval_batch_size=7", "device=cpu", "data.decode_workers=3", "logger=none", "seed=3",
                            "eval_every=1", "flops_images=3", "force=true")  # not results, or path pieces
    assert level("method=vpt", "method.mode=shallow") == level("method=vpt")  # the label vpt_shallow says it
    assert level("method=vpt", "method.prompt_length=5").startswith("epochs@2+method.prompt_length@5+")
    assert level("optimizer=sgd").startswith("epochs@2+optimizer@sgd+")
    long = level(*(f"optimizer.betas=[0.{i}, 0.999]" for i in range(1, 2)), "optimizer.weight_decay=0.123456789",
                 "label_smoothing=0.1", "drop_path=0.2", "grad_clip=3.5", "weight_decay_1d=true")
    assert len(long) <= 64 + 9 and "/" not in long
    untouched = compose(["dataset=digits", "backbone=vit_test", "logger=none"])
    assert Path(untouched.paths.run_dir).parts[-4:] == ("digits", "ssf", "vit_test", "seed42")  # no level


def test_hyper_parameter_sweep_runs_every_point_and_a_rerun_skips_them(tmp_path):
    common = ["-m", "protocol=tune", "optimizer.lr=1e-3,1e-2,1e-1", "method=linear", "dataset=digits",
              "backbone=vit_test", "logger=none", "epochs=1", f"paths.runs={tmp_path / 'runs'}"]
    out = run_cli("train.py", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    found = sorted(json.loads(p.read_text())["config"]["optimizer"]["lr"] for p in tmp_path.rglob("metrics.json"))
    assert found == [1e-3, 1e-2, 1e-1] and "sweep: 3 runs — 3 new" in out.stdout
    again = run_cli("train.py", *common, cwd=tmp_path)
    assert again.returncode == 0 and "sweep: 3 runs — 3 done before" in again.stdout, again.stdout


def test_a_failing_run_does_not_stop_the_sweep(tmp_path):
    """Four runs, one diverging: three finish, the summary names the failed run's log, the exit code is 1; fixing
    that run's lr reruns only it."""
    common = ["-m", "method=ssf", "dataset=digits", "backbone=vit_test", "logger=none", "epochs=1",
              f"paths.runs={tmp_path / 'runs'}"]
    out = run_cli("train.py", *common, "optimizer.lr=1e-3,1e-2,1e6,1e-1", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert len(list(tmp_path.rglob("metrics.json"))) == 3
    summary = next(line for line in out.stdout.splitlines() if "sweep: 4 runs" in line)
    assert "3 new, 1 failed: " in summary and "optimizer.lr@1000000.0-" in summary and summary.endswith("train.log")
    log = Path(summary.rsplit(": ", 1)[1])
    assert "training diverged in epoch 1/1" in log.read_text()
    assert "Traceback" not in out.stdout + out.stderr

    again = run_cli("train.py", *common, "optimizer.lr=1e-3,1e-2,1e-4,1e-1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "sweep: 4 runs — 3 done before, 1 new" in again.stdout


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
    (metrics,) = (runs / "digits/digits/bitfit/vit_test").glob("epochs@1+scheduler.warmup_epochs@0-*/seed42/metrics.*")

    out = run_cli("train.py", "-m", "method=bitfit,linear", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout + out.stderr  # bitfit was done above
    assert sorted(p.parts[-5] for p in runs.rglob("metrics.json")) == ["bitfit", "linear"]
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


def test_shell_completion_lists_nested_options_without_importing_torch(tmp_path):
    def complete(line: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-X", "importtime", str(PROJECT_ROOT / "train.py"), "-sc", "query=bash"],
                              cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COMP_LINE": line})

    out = complete("python train.py dataset=vtab/c")
    assert out.stdout.split() == ["dataset=vtab/caltech101", "dataset=vtab/cifar", "dataset=vtab/clevr_count",
                                  "dataset=vtab/clevr_dist"], out.stderr[-2000:]
    assert not [line for line in out.stderr.splitlines() if line.rstrip().endswith(("| torch", "| timm"))]
    everything = complete("python train.py dataset=").stdout.split()
    assert len(everything) == 34 and "dataset=fgvc/cub" in everything and not any("/_" in o for o in everything)
    assert complete("python train.py epo").stdout.split() == ["epochs="]  # Hydra's own answer for keys


def test_help_lists_options_without_private_bases(tmp_path):
    out = run_cli("train.py", "--help", cwd=tmp_path)
    groups = out.stdout.split("== Config ==")[0]
    assert out.returncode == 0 and "vtab/cifar" in groups and "fgvc/cub" in groups and "ssf_vtab" in groups
    assert not re.search(r"(^|[ /])_\w", groups, re.MULTILINE), groups  # vtab/_vtab, _base, _noah_vtab
