"""The training loop: per-iteration schedule, bf16 autocast on CUDA, checkpoint every epoch, resume.

No per-step host synchronisation: losses accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import inspect
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import param_groups_weight_decay
from torch import nn

from data.loader import DeviceLoader
from data.task import Task
from methods.base import Method
from runners.errors import UserError
from runners.io import save_torch
from runners.loggers import NullLogger

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.benchmark = not deterministic


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class FitResult:
    top1: float
    train_seconds: float
    train_images: int
    curve: list[dict] = field(default_factory=list)  # intermediate evaluations (eval_every)

    @property
    def images_per_second(self) -> float:
        return self.train_images / max(self.train_seconds, 1e-9)


class Trainer:
    """Fits `model` (with `method` attached) on `task.train`, then evaluates once on `task.eval`."""

    def __init__(self, cfg: DictConfig, model: nn.Module, method: Method, task: Task, device: torch.device,
                 run_dir: Path, config_hash: str, logger: NullLogger | None = None,
                 heartbeat: Callable[[], None] | None = None):
        self.cfg, self.model, self.method, self.task = cfg, model, method, task
        self.heartbeat = heartbeat or (lambda: None)
        self.device, self.run_dir, self.config_hash = device, Path(run_dir), config_hash
        self.logger = logger or NullLogger()
        mean, std = list(cfg.backbone.mean), list(cfg.backbone.std)
        self.train_loader = DeviceLoader(task.train, cfg.batch_size, device, mean, std, shuffle=True,
                                         drop_last=True, seed=cfg.seed, augment=task.augment)
        self.eval_loader = DeviceLoader(task.eval, cfg.eval_batch_size, device, mean, std)
        self.optimizer = self._optimizer()
        self.scheduler = instantiate(cfg.scheduler)(self.optimizer, steps_per_epoch=len(self.train_loader),
                                                    epochs=cfg.epochs)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=bool(cfg.amp) and device.type == "cuda")

    def _optimizer(self) -> torch.optim.Optimizer:
        factory = instantiate(self.cfg.optimizer)
        weight_decay = float(self.cfg.optimizer.get("weight_decay", 0.0))
        if self.cfg.weight_decay_1d:
            params = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        else:  # timm's rule: no decay on biases, norms, per-channel vectors or the model's own no-decay list
            skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
            params = param_groups_weight_decay(self.model, weight_decay, no_weight_decay_list=skip)
            params = [g for g in params if g["params"]]
        if not any(g["params"] for g in params):
            raise UserError(f"method '{self.method.name}' left no trainable parameter")
        extra = {}
        if self.device.type == "cuda" and "fused" in inspect.signature(factory.func).parameters:
            extra["fused"] = True
        try:
            return factory(params, **extra)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad optimizer setting: {e}") from None

    def _checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _save_checkpoint(self, epoch: int, step: int, seconds: float, images: int, curve: list) -> None:
        save_torch(self._checkpoint_path(), {
            "epoch": epoch, "step": step, "train_seconds": seconds, "train_images": images, "curve": curve,
            "trainable": self.method.trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(), "config_hash": self.config_hash,
        })

    def _resume(self) -> dict | None:
        path = self._checkpoint_path()
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config_hash"] != self.config_hash:
            raise UserError(f"{path} belongs to a run with another config ({state['config_hash']} vs "
                            f"{self.config_hash}); rerun with force=true to start over, or set run_name=...")
        missing = set(self.method.trainable_state(self.model)) - set(state["trainable"])
        unexpected = self.model.load_state_dict(state["trainable"], strict=False).unexpected_keys
        if missing or unexpected:
            raise UserError(f"{path} does not match this model (missing {sorted(missing)[:3]}, unexpected "
                            f"{unexpected[:3]}); rerun with force=true to start over")
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d/%d", self.run_dir, state["epoch"], self.cfg.epochs)
        return state

    def _train_epoch(self, epoch: int, step: int, progress: Progress, bar) -> tuple[int, torch.Tensor]:
        self.model.train()
        self.train_loader.set_epoch(epoch)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss_sum = torch.zeros((), device=self.device)
        for x, y in self.train_loader:
            self.scheduler.step_update(step)
            with self.autocast:
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            extra = self.method.extra_loss(self.model)
            if extra is not None:
                loss = loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach()
            step += 1
            progress.advance(bar)
        return step, loss_sum / max(1, len(self.train_loader))

    def fit(self) -> FitResult:
        epochs = self.cfg.epochs
        state = self._resume()
        start, step = (state["epoch"], state["step"]) if state else (0, 0)
        seconds, images = (state["train_seconds"], state["train_images"]) if state else (0.0, 0)
        curve = list(state["curve"]) if state else []
        per_epoch = self.train_loader.images_per_epoch
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not sys.stderr.isatty(), transient=True) as progress:
            bar = progress.add_task(f"{self.method.name} · {self.task.name}", total=epochs * len(self.train_loader),
                                    completed=step)
            for epoch in range(start, epochs):
                self._sync()
                t0 = time.perf_counter()
                step, loss = self._train_epoch(epoch, step, progress, bar)
                self._sync()
                seconds += time.perf_counter() - t0
                images += per_epoch
                self.method.on_epoch_end(self.model, epoch)
                values = {"train/loss": loss.item(), "train/lr": self.optimizer.param_groups[-1]["lr"],
                          "epoch": epoch + 1}
                last = epoch + 1 == epochs
                if self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0 and not last:
                    top1 = self.evaluate()
                    curve.append({"epoch": epoch + 1, "top1": top1})
                    values[f"eval/top1_{self.task.eval.name}"] = top1
                self.logger.log(values, step=step)
                progress.update(bar, description=f"{self.method.name} · {self.task.name} · epoch {epoch + 1} "
                                                 f"· loss {values['train/loss']:.3f}")
                self._save_checkpoint(epoch + 1, step, seconds, images, curve)
                self.heartbeat()
        top1 = self.evaluate()
        self.logger.log({f"eval/top1_{self.task.eval.name}": top1}, step=step)
        return FitResult(top1=top1, train_seconds=seconds, train_images=images,
                         curve=curve + [{"epoch": epochs, "top1": top1}])

    @torch.inference_mode()
    def evaluate(self) -> float:
        """Top-1 accuracy (%) on the task's evaluation split."""
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in self.eval_loader:
            with self.autocast:
                correct += (self.model(x).argmax(dim=-1) == y).sum()
        self.model.train(was_training)
        return 100.0 * correct.item() / len(self.task.eval)

    def remove_checkpoint(self) -> None:
        self._checkpoint_path().unlink(missing_ok=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
