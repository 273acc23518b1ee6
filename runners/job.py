"""One run, end to end: task → backbone → attach → prepare → techniques → count → fit → evaluate → report.

Nothing here knows a method's or a technique's name: the method is built from `cfg.method` through the
registry, the techniques from their config groups (`memory`, `quant`, `init`).

A run folder holds, besides `metrics.json`: `config.yaml`; `plan.json` (the method's data-dependent plan and
the techniques' provenance, written before training, so a resumed run rebuilds the model without a data
pass); `checkpoint.pt` while training; `trainable.safetensors` (the task checkpoint, its metadata holding the
plan).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data import DecodeCache, build_task
from data.loader import DeviceLoader, SplitPass
from methods import create_method
from methods.techniques import GROUPS, Adaptation
from runners.backbone import build_backbone, resolve_device, weights_tag
from runners.config import config_hash
from runners.errors import UserError, damaged
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
from runners.sources import TRAINABLE, plan_of, read_task_checkpoint
from runners.trainer import CHECKPOINT, Trainer, seed_everything, task_loss

log = logging.getLogger(__name__)

METRICS = "metrics.json"
PLAN = "plan.json"


class RunOutcome(dict):
    """The run's metrics (as written to metrics.json) and how this call came by them, `status`:
    `done` (finished before, skipped), `busy` (another process holds the run; no metrics),
    `resumed` (finished from a checkpoint) or `new`."""

    def __init__(self, metrics: dict, status: str):
        super().__init__(metrics)
        self.status = status


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise damaged(path, e) from None


def _existing(run_dir: Path, digest: str) -> RunOutcome | None:
    """The metrics of a finished run in `run_dir`, announcing the skip in one line."""
    path = run_dir / METRICS
    if not path.exists():
        return None
    metrics = RunOutcome(_read_json(path), "done")
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
    lock = RunLock(run_dir)
    if not cfg.force and (done := _existing(run_dir, digest)) is not None:
        if lock.clear_if_stale():  # its writer was killed after metrics.json, before removing its checkpoint
            (run_dir / CHECKPOINT).unlink(missing_ok=True)
        return done
    if not lock.acquire():
        holder = lock.holder() or {}
        log.info("skipped: %s is being run by pid %s on %s", run_dir, holder.get("pid"), holder.get("host"))
        return RunOutcome({}, "busy")
    try:
        if cfg.force:
            for name in (METRICS, TRAINABLE, CHECKPOINT, PLAN):
                (run_dir / name).unlink(missing_ok=True)
        elif (done := _existing(run_dir, digest)) is not None:  # finished while we waited for the lock
            return done
        status = "resumed" if (run_dir / CHECKPOINT).exists() else "new"
        return RunOutcome(_train_and_report(cfg, run_dir, digest, lock), status)
    finally:
        lock.release()


def build_adaptation(cfg: DictConfig) -> Adaptation:
    """The configured method and its techniques (each technique group that is not `none`)."""
    method = create_method(**instantiate(cfg.method, _convert_="all"))  # nested _target_s (a source run) built
    return Adaptation(method, [instantiate(cfg[g]) for g in GROUPS if cfg.get(g)])


def _read_plan(run_dir: Path, digest: str) -> dict | None:
    path = run_dir / PLAN
    if not path.exists():
        return None
    saved = _read_json(path)
    if saved.get("config_hash") != digest:
        raise UserError(f"{path} belongs to a run with another config ({saved.get('config_hash')} vs {digest}); "
                        f"rerun with force=true to start over, or set run_name=...")
    return saved


def _deployed(model: nn.Module, adaptation: Adaptation) -> tuple[nn.Module, str]:
    """The model as it is evaluated and deployed: merged into a plain timm model where the method merges."""
    if adaptation.mergeable(model):
        return adaptation.merge(copy.deepcopy(model)), "merged"
    return model, "as trained"


def _first_images(loader: DeviceLoader, count: int) -> Iterator[torch.Tensor]:
    """The first `count` images of `loader`, in its batches."""
    for x, _ in loader:
        if count <= 0:
            return
        yield x[:count]
        count -= len(x)


def _train_and_report(cfg: DictConfig, run_dir: Path, digest: str, lock: RunLock) -> dict:
    started = time.perf_counter()
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    bb = cfg.backbone
    logger = instantiate(cfg.logger)  # first: a bad logger setting stops the run before any work
    cache = DecodeCache(cfg.data.cache_dir, cfg.data.decode_workers, cfg.data.skip_corrupt)
    task = build_task(cfg.dataset, cfg.protocol, cfg.pipeline, bb.image_size, cache)
    model = build_backbone(bb, task.num_classes, drop_path=cfg.drop_path).to(device)
    adaptation = build_adaptation(cfg)

    saved = _read_plan(run_dir, digest)
    data = SplitPass(task.train, device, list(cfg.pipeline.mean), list(cfg.pipeline.std), task.num_classes)
    t0 = time.perf_counter()
    model, plan = adaptation.build(model, saved["plan"] if saved else None, None if saved else data,
                                   task_loss(cfg.label_smoothing))
    prepare_seconds = 0.0 if saved else time.perf_counter() - t0
    resuming = (run_dir / CHECKPOINT).exists()
    if not resuming:
        adaptation.initialise(model)
    if saved is None or not resuming:
        saved = {"plan": plan, "techniques": adaptation.provenance(), "config_hash": digest,
                 "prepare_seconds": prepare_seconds}
        write_json(run_dir / PLAN, saved)
    counts = count_params(model)

    def new_plan(plan: dict) -> None:  # a hook set another plan (a rewind, scores at the end of training)
        saved["plan"] = plan
        write_json(run_dir / PLAN, saved)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger.start(run_dir, name=str(Path(cfg.paths.run_subdir)), config=resolved)
    try:
        reset_peak_memory(device)
        trainer = Trainer(cfg, model, adaptation, task, device, run_dir, digest, logger, heartbeat=lock.refresh,
                          on_plan=new_plan, data=data)
        fit = trainer.fit()
        trainer.use_ema()
        deployed, deployed_as = _deployed(model, adaptation)
        top1 = trainer.evaluate(deployed)
        logger.log({f"eval/top1_{task.eval.name}": top1}, step=fit.steps)
        gmacs, counted = gmacs_per_image(deployed, _first_images(trainer.eval_loader, cfg.flops_images))
        memory, memory_kind = peak_memory(device)
        trainable = run_dir / TRAINABLE
        stored = adaptation.stored(model)
        save_safetensors(trainable, stored, metadata={
            "method": adaptation.method.name, "label": adaptation.label, "backbone": bb.name,
            "config_hash": digest, "plan": json.dumps(saved["plan"])})
        curve = fit.curve + [{"epoch": cfg.epochs, "top1": top1}]
        metrics = {
            "task": task.name,
            "benchmark": task.benchmark,
            "group": task.group,
            "num_classes": task.num_classes,
            "method": adaptation.method.name,
            "method_label": adaptation.label,
            "run_name": cfg.run_name,
            "hparams": cfg.paths.hparams,  # the overrides that made this run's folder ('' for the recipe's values)
            "backbone": bb.name,
            "seed": cfg.seed,
            "protocol": cfg.protocol,
            "top1": top1,
            "top1_curve": curve,
            "top1_best_over_evaluations": max(point["top1"] for point in curve),
            "params": counts.as_dict(),
            "method_report": adaptation.method.report(model),
            "stored_bytes": trainable.stat().st_size,
            "stored_tensor_bytes": sum(t.numel() * t.element_size() for t in stored.values()),
            "gmacs_per_image": gmacs,
            "peak_memory_mib": memory,
            "peak_memory_kind": memory_kind,
            "train_images_per_s": fit.images_per_second,
            "train_seconds": fit.train_seconds,
            "train_epoch_seconds": fit.epoch_seconds,
            "prepare_seconds": saved.get("prepare_seconds", 0.0),
            "wall_seconds": time.perf_counter() - started,
            "epochs": cfg.epochs,
            "device": str(device),
            "provenance": {
                **task.meta,
                "normalisation": {"name": cfg.pipeline.normalisation, "mean": list(cfg.pipeline.mean),
                                  "std": list(cfg.pipeline.std)},
                "pipeline": OmegaConf.to_container(cfg.pipeline, resolve=True),
                "selection": "final epoch",
                "evaluated": deployed_as,
                "compiled": trainer.compiled_as,
                "gmacs": {"images": counted, "model": deployed_as, "split": task.eval.name,
                          "counter": "torch FlopCounterMode / 2 (multiply-adds)"},
                "techniques": saved["techniques"],
                "plan": PLAN if saved["plan"] is not None else None,
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
        logger.summary({"top1": top1, **counts.as_dict()})
        log.info("%s on %s: top-1 %.2f%% · %s trainable (%s with head) · %s", adaptation.label, task.name, top1,
                 f"{counts.trainable_without_head:,}", f"{counts.trainable_with_head:,}", run_dir)
    finally:
        logger.finish()
    return metrics


def load_run(run_dir: str | Path) -> tuple[DictConfig, nn.Module, Adaptation]:
    """The finished run in `run_dir` as it ended: its config, its model (backbone weights from the same
    source, the method rebuilt from the saved plan — no data is read —, the task-specific tensors from
    trainable.safetensors) and its adaptation, in eval mode on CPU."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", METRICS, TRAINABLE):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished run (no {name}); pass a folder that has metrics.json")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / METRICS).read_text())
    seed_everything(cfg.seed, deterministic=False)
    model = build_backbone(cfg.backbone, metrics["num_classes"])
    adaptation = build_adaptation(cfg)
    stored, meta = read_task_checkpoint(run_dir)
    model, _ = adaptation.build(model, plan_of(meta))
    state = adaptation.restored(model, stored)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(adaptation.state(model)) - set(state):
        raise UserError(f"{run_dir / TRAINABLE} does not match the model its config builds")
    return cfg, model.eval(), adaptation
