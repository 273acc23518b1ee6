"""The training loop: per-iteration schedule, bf16 autocast on CUDA, checkpoint every epoch, resume.

With `compile=<mode>` the model's forward (and so its backward) is run through `torch.compile` in that mode for
training and evaluation — `reduce-overhead` replays them as CUDA graphs —; the optimizer step stays eager (fused
AdamW on CUDA). Training batches all have one shape (drop_last) and the last evaluation batch is padded to the
others', so each model is compiled once per mode (train/eval).

No per-step host synchronisation: losses and logged values accumulate on the device and are read once per
epoch — which is also where a diverged run (a non-finite loss in any step) is stopped, before its checkpoint is
written. The method's and techniques' hooks see every step (`extra_loss`) and every epoch (`on_epoch_end`,
which may restart the optimizer and schedule). Ctrl-C or SIGTERM leaves the last epoch's checkpoint, and the
interrupt says where it stopped.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn

from data.loader import DeviceLoader, SplitPass, train_loader
from data.task import Task
from methods.base import DataPass, EpochContext, StepContext
from methods.techniques import Adaptation
from runners.errors import UserError, damaged, first_line
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
    """Every RNG's state as tensors and plain values, so the checkpoint loads with `weights_only=True`."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def task_loss(label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on float32 logits: with the run's label smoothing for class indices, or against soft targets
    (mixup/cutmix, which smooth the labels themselves)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:
            return torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)

    return loss


@dataclass
class FitResult:
    """Training so far: what the checkpoint keeps and the run reports."""

    train_seconds: float = 0.0
    train_images: int = 0
    steps: int = 0
    curve: list[dict] = field(default_factory=list)  # intermediate evaluations (eval_every)
    epoch_seconds: list[float] = field(default_factory=list)  # each epoch's training (the first compiles, if any)

    @property
    def images_per_second(self) -> float:
        return self.train_images / max(self.train_seconds, 1e-9)


class _EpochLog:
    """Device scalars accumulated over an epoch, read once at its end."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] += 1

    def means(self) -> dict[str, float]:
        return {f"train/{k}": (v / self.counts[k]).item() for k, v in self.sums.items()}


class Trainer:
    """Fits `model` (adapted by `adaptation`) on `task.train`; `evaluate` scores a model on `task.eval`.

    `on_plan(plan)` is called when a hook sets a new plan (the runner saves it); `data` is the training split as
    a data pass (for hooks that read it, e.g. an importance pass at the end of training).
    """

    def __init__(self, cfg: DictConfig, model: nn.Module, adaptation: Adaptation, task: Task, device: torch.device,
                 run_dir: Path, config_hash: str, logger: NullLogger | None = None,
                 heartbeat: Callable[[], None] | None = None, on_plan: Callable[[dict], None] | None = None,
                 data: DataPass | None = None):
        self.cfg, self.model, self.adaptation, self.task = cfg, model, adaptation, task
        self.heartbeat = heartbeat or (lambda: None)
        self.on_plan = on_plan or (lambda plan: None)
        self.device, self.run_dir, self.config_hash = device, Path(run_dir), config_hash
        self.logger = logger or NullLogger()
        self.loss_fn = task_loss(cfg.label_smoothing)
        mean, std = list(cfg.pipeline.mean), list(cfg.pipeline.std)
        self.data = data or SplitPass(task.train, device, mean, std, task.num_classes)
        self.train_loader = train_loader(task, cfg.batch_size, device, cfg.pipeline, cfg.seed,
                                         workers=cfg.data.augment_workers)
        self.eval_loader = DeviceLoader(task.eval, cfg.eval_batch_size, device, mean, std)
        self.ema = ModelEmaV3(model, decay=float(cfg.pipeline.ema)) if cfg.pipeline.get("ema") else None
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=bool(cfg.amp) and device.type == "cuda")
        self.compile_mode = None if cfg.compile == "none" else str(cfg.compile)
        self.forward_model = self._compiled(model)
        self.compile_eval = self.compile_mode is not None and not adaptation.method.eval_shapes_depend_on_data
        self.schedule_origin = 0  # the step the current optimizer and schedule started at
        self._build_optimizer(cfg.epochs)

    @property
    def method_name(self) -> str:
        return self.adaptation.method.name

    @property
    def compiled_as(self) -> str:
        """How the forward ran, for the provenance."""
        if not self.compile_mode:
            return "eager"
        return f"torch.compile mode={self.compile_mode}" + ("" if self.compile_eval else
                                                            " (evaluation eager: data-dependent token counts)")

    def _compiled(self, model: nn.Module) -> nn.Module:
        """`model` behind torch.compile (shares its parameters and modules), or `model` itself when not compiling.
        Random ops (dropout, drop-path, Gumbel noise) keep torch's own generator, so a compiled run draws the masks
        the eager run draws."""
        if not self.compile_mode:
            return model
        from torch._inductor import list_mode_options

        options = {**list_mode_options(self.compile_mode, False), "fallback_random": True}  # the mode; eager RNG
        return torch.compile(model, dynamic=False, options=options)

    @contextlib.contextmanager
    def _compiling(self) -> Iterator[None]:
        """A compiler failure (no C++ compiler, an unsupported op) as one line that offers the eager run."""
        if not self.compile_mode:
            yield
            return
        from torch._dynamo.exc import BackendCompilerFailed  # not imported by eager runs

        try:
            yield
        except BackendCompilerFailed as e:
            raise UserError(f"torch.compile (compile={self.compile_mode}) failed: {first_line(e, None)}; rerun with "
                            f"compile=none") from None

    def _step_begin(self) -> None:
        """Marks a new step for CUDA graph replays: the previous step's graph outputs are no longer read."""
        if self.compile_mode:
            torch.compiler.cudagraph_mark_step_begin()

    def _build_optimizer(self, epochs: int) -> None:
        self.optimizer = self._optimizer()
        self.scheduler = instantiate(self.cfg.scheduler)(self.optimizer, steps_per_epoch=len(self.train_loader),
                                                         epochs=epochs)
        self.schedule_epochs = epochs

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
            raise UserError(f"method '{self.method_name}' left no trainable parameter")
        extra = {}
        if self.device.type == "cuda" and "fused" in inspect.signature(factory.func).parameters:
            extra["fused"] = True
        try:
            return factory(params, **extra)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad optimizer setting: {e}") from None

    def _checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _save_checkpoint(self, epoch: int, fit: FitResult) -> None:
        save_torch(self._checkpoint_path(), {
            "epoch": epoch, "step": fit.steps, "train_seconds": fit.train_seconds, "train_images": fit.train_images,
            "curve": fit.curve, "epoch_seconds": fit.epoch_seconds,
            "trainable": self.adaptation.state(self.model), "optimizer": self.optimizer.state_dict(),
            "schedule": {"origin": self.schedule_origin, "epochs": self.schedule_epochs},
            "ema": self._ema_state() if self.ema is not None else {},
            "rng": _rng_state(), "config_hash": self.config_hash,
        })

    def _resume(self) -> dict | None:
        path = self._checkpoint_path()
        if not path.exists():
            return None
        try:
            with warnings.catch_warnings():  # a damaged file may look like another pickle protocol
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # any failure to read back what this runner wrote: the file is damaged
            raise damaged(path, e) from None
        if state["config_hash"] != self.config_hash:
            raise UserError(f"{path} belongs to a run with another config ({state['config_hash']} vs "
                            f"{self.config_hash}); rerun with force=true to start over, or set run_name=...")
        missing = set(self.adaptation.state(self.model)) - set(state["trainable"])
        unexpected = self.model.load_state_dict(state["trainable"], strict=False).unexpected_keys
        if missing or unexpected:
            raise UserError(f"{path} does not match this model (missing {sorted(missing)[:3]}, unexpected "
                            f"{unexpected[:3]}); rerun with force=true to start over")
        self._build_optimizer(state["schedule"]["epochs"])
        self.schedule_origin = state["schedule"]["origin"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"], strict=False)
        _set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d/%d", self.run_dir, state["epoch"], self.cfg.epochs)
        return state

    def restart(self, epoch: int, step: int, plan: dict | None = None) -> None:
        """A fresh optimizer and schedule from `step`, over the epochs after `epoch` (a hook's rewind)."""
        if plan is not None:
            self.on_plan(plan)
        self._build_optimizer(self.cfg.epochs - epoch)
        self.schedule_origin = step
        log.info("restarted the optimizer and schedule after epoch %d", epoch)

    def _train_epoch(self, epoch: int, step: int, progress: Progress, bar, epoch_log: _EpochLog) -> int:
        self.model.train()
        self.train_loader.set_epoch(epoch)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for x, y in self.train_loader:
            self.scheduler.step_update(step - self.schedule_origin)
            self._step_begin()
            with self.autocast:
                logits, aux = self.adaptation.method.training_forward(self.forward_model, x)
            loss = self.loss_fn(logits, y)
            epoch_log.add("loss_task", loss)
            ctx = StepContext(epoch, step, x, y, logits, self.loss_fn, epoch_log.add, aux)
            for hook in self.adaptation.hooks:
                for name, term in hook.extra_loss(self.model, ctx).items():
                    epoch_log.add(name, term)
                    loss = loss + term
            epoch_log.add("loss", loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            step += 1
            progress.advance(bar)
        return step

    def fit(self) -> FitResult:
        epochs = self.cfg.epochs
        state = self._resume()
        start = state["epoch"] if state else 0
        fit = FitResult(state["train_seconds"], state["train_images"], state["step"], list(state["curve"]),
                        list(state.get("epoch_seconds", []))) if state else FitResult()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        terminal = sys.stderr.isatty()
        epoch = start
        try:
            with Progress(*columns, disable=not terminal, transient=True) as progress, self._compiling():
                bar = progress.add_task(f"{self.method_name} · {self.task.name}",
                                        total=epochs * len(self.train_loader), completed=fit.steps)
                for epoch in range(start, epochs):
                    self._epoch(epoch, fit, progress, bar, terminal)
        except KeyboardInterrupt as interrupt:
            interrupt.where = f"epoch {epoch + 1}/{epochs} of {self.run_dir}"
            raise
        return fit

    def _epoch(self, epoch: int, fit: FitResult, progress: Progress, bar, terminal: bool) -> None:
        """One epoch, its hooks, log and checkpoint, counted into `fit`."""
        epochs = self.cfg.epochs
        self._sync()
        t0 = time.perf_counter()
        epoch_log = _EpochLog()
        step = fit.steps = self._train_epoch(epoch, fit.steps, progress, bar, epoch_log)
        self._sync()
        took = time.perf_counter() - t0
        fit.train_seconds += took
        fit.epoch_seconds.append(took)
        fit.train_images += self.train_loader.images_per_epoch
        values = {**epoch_log.means(), "train/lr": self.optimizer.param_groups[-1]["lr"], "epoch": epoch + 1}
        done = epoch + 1
        if not (math.isfinite(values["train/loss"]) and self._weights_finite()):
            raise UserError(f"training diverged in epoch {done}/{epochs} (loss {values['train/loss']}); lower "
                            f"optimizer.lr (now {self.cfg.optimizer.lr}) or set grad_clip=1.0, then rerun")
        ctx = EpochContext(done, epochs, step, self.optimizer, self.scheduler,
                           lambda name, value, _v=values: _v.__setitem__(f"train/{name}", value),
                           lambda plan=None, _e=done, _s=step: self.restart(_e, _s, plan),
                           self.on_plan, self.data, self.loss_fn)
        for hook in self.adaptation.hooks:
            hook.on_epoch_end(self.model, ctx)
        if self.cfg.eval_every and done % self.cfg.eval_every == 0 and done != epochs:
            top1 = self.evaluate()
            fit.curve.append({"epoch": done, "top1": top1})
            values[f"eval/top1_{self.task.eval.name}"] = top1
        self.logger.log(values, step=step)
        if not terminal:  # a log file or a SLURM log: one line per epoch instead of the progress bar
            log.info("epoch %d/%d · loss %.4f · lr %.3g · %.0f images/s", done, epochs, values["train/loss"],
                     values["train/lr"], self.train_loader.images_per_epoch / max(took, 1e-9))
        progress.update(bar, description=f"{self.method_name} · {self.task.name} · epoch {done} "
                                         f"· loss {values['train/loss']:.3f}")
        self._save_checkpoint(done, fit)
        self.heartbeat()

    def _weights_finite(self) -> bool:
        """Every trainable tensor finite (one reduction, read with the epoch's log)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None) -> float:
        """Top-1 accuracy (%) of `model` (default: the model being trained) on the task's evaluation split."""
        model = self.model if model is None else model
        if not self.compile_eval:
            forward = model
        else:
            forward = self.forward_model if model is self.model else self._compiled(model)
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        size = min(self.eval_loader.batch_size, len(self.task.eval))
        with self._compiling():
            for x, y in self.eval_loader:
                n = len(x)
                if forward is not model and n < size:  # the batch shape compiled for: no second compilation
                    x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
                self._step_begin()
                with self.autocast:
                    correct += (forward(x)[:n].argmax(dim=-1) == y).sum()
        model.train(was_training)
        return 100.0 * correct.item() / len(self.task.eval)

    def _ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA model's copies of the tensors that train (the rest equals the model's)."""
        keys = set(self.adaptation.state(self.model))
        return {k: v for k, v in self.ema.module.state_dict().items() if k in keys}

    def use_ema(self) -> None:
        """Put the EMA weights into the model (what is then evaluated and stored, as SSF's EMA runs report)."""
        if self.ema is not None:
            self.model.load_state_dict(self._ema_state(), strict=False)

    def remove_checkpoint(self) -> None:
        self._checkpoint_path().unlink(missing_ok=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
