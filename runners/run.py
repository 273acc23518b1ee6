"""One run, end to end: task → backbone → method → fit → evaluate → report.

Nothing here knows a method's name: the method is built from `cfg.method` through the registry.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch import nn

from data import DecodeCache, build_task
from methods import Method, create_method
from runners.backbone import build_backbone, resolve_device, weights_tag
from runners.config import config_hash
from runners.errors import UserError
from runners.io import save_safetensors, write_json, write_text
from runners.locks import RunLock
from runners.report import (
    count_params,
    git_commit,
    gmacs_per_image,
    library_versions,
    peak_memory,
    reset_peak_memory,
)
from runners.trainer import CHECKPOINT, Trainer, seed_everything

log = logging.getLogger(__name__)

METRICS = "metrics.json"
TRAINABLE = "trainable.safetensors"


class RunOutcome(dict):
    """The run's metrics (as written to metrics.json) and how this call came by them, `status`:
    `done` (finished before, skipped), `busy` (another process holds the run; no metrics),
    `resumed` (finished from a checkpoint) or `new`."""

    def __init__(self, metrics: dict, status: str):
        super().__init__(metrics)
        self.status = status


def _existing(run_dir: Path, digest: str) -> RunOutcome | None:
    """The metrics of a finished run in `run_dir`, announcing the skip in one line."""
    path = run_dir / METRICS
    if not path.exists():
        return None
    metrics = RunOutcome(json.loads(path.read_text()), "done")
    old = metrics.get("provenance", {}).get("config_hash")
    differs = "" if old == digest else (f" (its config {old} differs from this one, {digest}: set run_name=... "
                                        f"for a separate run, or force=true to replace it)")
    log.info("skipped: %s already has %s%s", run_dir, METRICS, differs)
    return metrics


def run(cfg: DictConfig) -> RunOutcome:
    """Train and evaluate one (task, backbone, method, seed); returns the metrics written to metrics.json.

    A finished run is skipped, a checkpointed one resumed, and a run another process holds is left alone
    (a lock file per run directory), so sweeps can be killed, rerun and run side by side.
    """
    run_dir = Path(cfg.paths.run_dir)
    digest = config_hash(cfg)
    if not cfg.force and (done := _existing(run_dir, digest)) is not None:
        return done
    lock = RunLock(run_dir)
    if not lock.acquire():
        holder = lock.holder() or {}
        log.info("skipped: %s is being run by pid %s on %s", run_dir, holder.get("pid"), holder.get("host"))
        return RunOutcome({}, "busy")
    try:
        if cfg.force:
            for name in (METRICS, TRAINABLE, CHECKPOINT):
                (run_dir / name).unlink(missing_ok=True)
        elif (done := _existing(run_dir, digest)) is not None:  # finished while we waited for the lock
            return done
        status = "resumed" if (run_dir / CHECKPOINT).exists() else "new"
        return RunOutcome(_train_and_report(cfg, run_dir, digest, lock), status)
    finally:
        lock.release()


def _train_and_report(cfg: DictConfig, run_dir: Path, digest: str, lock: RunLock) -> dict:
    started = time.perf_counter()
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    bb = cfg.backbone
    cache = DecodeCache(cfg.data.cache_dir, cfg.data.decode_workers, cfg.data.skip_corrupt)
    task = build_task(cfg.dataset, cfg.protocol, bb.image_size, bb.interpolation, cache)
    model = build_backbone(bb, task.num_classes, drop_path=cfg.drop_path)
    method = create_method(**cfg.method)
    method.attach(model)
    counts = count_params(model)
    model.to(device)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger = instantiate(cfg.logger)
    logger.start(run_dir, name=str(Path(cfg.paths.run_subdir)), config=resolved)
    try:
        reset_peak_memory(device)
        trainer = Trainer(cfg, model, method, task, device, run_dir, digest, logger, heartbeat=lock.refresh)
        method.prepare(model, trainer.train_loader)
        fit = trainer.fit()
        memory, memory_kind = peak_memory(device)
        trainable = run_dir / TRAINABLE
        save_safetensors(trainable, method.trainable_state(model),
                         metadata={"method": method.name, "backbone": bb.name, "config_hash": digest})
        metrics = {
            "task": task.name,
            "benchmark": task.benchmark,
            "group": task.group,
            "num_classes": task.num_classes,
            "method": method.name,
            "method_label": method.label,
            "run_name": cfg.run_name,
            "backbone": bb.name,
            "seed": cfg.seed,
            "protocol": cfg.protocol,
            "top1": fit.top1,
            "top1_curve": fit.curve,
            "top1_best_over_evaluations": max(point["top1"] for point in fit.curve),
            "params": counts.as_dict(),
            "stored_bytes": trainable.stat().st_size,
            "gmacs_per_image": gmacs_per_image(model, bb.image_size, device),
            "peak_memory_mib": memory,
            "peak_memory_kind": memory_kind,
            "train_images_per_s": fit.images_per_second,
            "train_seconds": fit.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "epochs": cfg.epochs,
            "device": str(device),
            "provenance": {
                **task.meta,
                "normalisation": {"mean": list(bb.mean), "std": list(bb.std)},
                "selection": "final epoch",
                "weights": weights_tag(bb),
                "timm_model": bb.model_name,
                "config_hash": digest,
                "git_commit": git_commit(),
                "versions": library_versions(),
            },
            "config": resolved,
        }
        write_json(run_dir / METRICS, metrics)
        trainer.remove_checkpoint()
        logger.summary({"top1": fit.top1, **counts.as_dict()})
        log.info("%s on %s: top-1 %.2f%% · %s trainable (%s with head) · %s", method.name, task.name, fit.top1,
                 f"{counts.trainable_without_head:,}", f"{counts.trainable_with_head:,}", run_dir)
    finally:
        logger.finish()
    return metrics


def load_run(run_dir: str | Path) -> tuple[DictConfig, nn.Module, Method]:
    """The finished run in `run_dir` as it ended: its config, its model (backbone weights from the same
    source, the task-specific tensors from trainable.safetensors) and its method, in eval mode on CPU."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", METRICS, TRAINABLE):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished run (no {name}); pass a folder that has metrics.json")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / METRICS).read_text())
    seed_everything(cfg.seed, deterministic=False)
    model = build_backbone(cfg.backbone, metrics["num_classes"])
    method = create_method(**cfg.method)
    method.attach(model)
    stored = load_file(run_dir / TRAINABLE)
    result = model.load_state_dict(stored, strict=False)
    if result.unexpected_keys or set(method.trainable_state(model)) - set(stored):
        raise UserError(f"{run_dir / TRAINABLE} does not match the model its config builds")
    return cfg, model.eval(), method
