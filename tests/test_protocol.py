"""The protocol the seed methods stand on: plans from `prepare`, hooks that see the training, techniques (init=run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore
from safetensors.torch import load_file
from torch import nn

import methods
from data import build_task
from methods.base import EpochContext, Method, StepContext, freeze_backbone
from methods.tuners import Tuner
from runners import run
from runners.job import load_run
from runners.trainer import Trainer
from tests.conftest import run_cli


class ChannelBias(Tuner):
    """y = base(x); y[..., channels] += toy_delta."""

    def __init__(self, base: nn.Module, channels: list[int]):
        super().__init__(base)
        self.register_buffer("toy_channels", torch.tensor(channels))
        self.toy_delta = nn.Parameter(torch.zeros(len(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y.index_add(-1, self.toy_channels, self.toy_delta.expand(*y.shape[:-1], -1)) if self.active else y


class ToyPrepare(Method):
    """A data-dependent toy: `prepare` picks the 4 channels of the final norm with the largest mean |output| over
    the training split and creates a module that trains a bias on them."""

    name, prefix = "toy_prepare", "toy_"
    passes = 0
    seen_images = 0

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)
        if plan is not None:
            model.norm = ChannelBias(model.norm, plan["channels"])

    def prepare(self, model, data, loss_fn) -> dict:
        type(self).passes += 1
        type(self).seen_images = data.images
        total = 0
        with torch.no_grad():
            for x, _ in data(100):
                total = total + model.eval().forward_features(x).abs().mean(dim=(0, 1))
        plan = {"channels": sorted(torch.topk(total, 4).indices.tolist())}
        self.attach(model, plan)
        return plan


class ToyHooks(Method):
    """Linear probing with two named extra terms, a logged value, and a rewind after epoch 1."""

    name, prefix = "toy_hooks", "toyh_"
    adam_steps: dict[int, int] = {}

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        freeze_backbone(model)

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.log("toy_logit_mean", ctx.logits.mean())
        return {"toy_l2": 1e-3 * model.head.weight.square().sum(), "toy_half": 0.5 + 0 * ctx.logits.sum()}

    def on_epoch_end(self, model: nn.Module, ctx: EpochContext) -> None:
        self.adam_steps[ctx.epoch] = int(ctx.optimizer.state[model.head.weight]["step"])
        if ctx.epoch == 1:
            ctx.restart()


class Recorder:
    """A logger that keeps every logged dict."""

    logged: list[dict] = []

    def start(self, run_dir, name, config):
        Recorder.logged = []

    def log(self, values, step):
        Recorder.logged.append(values)

    def summary(self, values):
        pass

    def finish(self):
        pass


@pytest.fixture
def toys(monkeypatch):
    for cls in (ToyPrepare, ToyHooks):
        monkeypatch.setitem(methods._REGISTRY, cls.name, cls)
        ConfigStore.instance().store(group="method", name=cls.name, node={"name": cls.name})
    ToyPrepare.passes = 0


class Interrupted(Exception):
    pass


def accuracy(model: nn.Module, cfg) -> float:
    task = build_task(cfg.dataset, cfg.protocol, cfg.pipeline, cfg.backbone.image_size)
    x = (task.eval.images.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        return 100.0 * (model(x).argmax(-1) == task.eval.labels).sum().item() / len(task.eval)


def test_a_plan_from_prepare_trains_is_counted_saved_and_resumed_without_a_data_pass(toys, tiny_cfg, tmp_path,
                                                                                  monkeypatch):
    common = ("method=toy_prepare", "epochs=3", "optimizer.lr=0.05", "deterministic=true")
    straight_cfg = tiny_cfg(*common, f"paths.runs={tmp_path / 'straight'}")
    straight = run(straight_cfg)
    assert ToyPrepare.passes == 1
    assert straight["params"]["trainable_without_head"] == 4
    run_dir = Path(straight_cfg.paths.run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())["plan"]
    assert len(plan["channels"]) == 4
    stored = load_file(run_dir / "trainable.safetensors")
    assert stored["norm.toy_delta"].abs().sum() > 0  # it trained (it starts at zero)
    assert stored["norm.toy_channels"].tolist() == plan["channels"]

    cfg = tiny_cfg(*common, f"paths.runs={tmp_path / 'interrupted'}")
    save = Trainer._save_checkpoint

    def save_then_stop(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 1:
            raise Interrupted

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        run(cfg)
    assert ToyPrepare.passes == 2
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    resumed = run(cfg)
    assert ToyPrepare.passes == 2  # the plan was read back: no data pass
    assert resumed["top1"] == straight["top1"]
    again = load_file(Path(cfg.paths.run_dir) / "trainable.safetensors")
    assert again.keys() == stored.keys() and all(torch.equal(again[k], stored[k]) for k in stored)

    loaded_cfg, model, _ = load_run(run_dir)
    assert ToyPrepare.passes == 2 and isinstance(model.norm, ChannelBias)
    assert accuracy(model, loaded_cfg) == straight["top1"]


def test_prepare_reads_only_the_tune_split_under_protocol_tune(toys, tiny_run):
    tiny_run("method=toy_prepare", "protocol=tune", "epochs=1")
    assert ToyPrepare.seen_images == 800  # train800: val200 stays unseen by the data-dependent step
    tiny_run("method=toy_prepare", "epochs=1")
    assert ToyPrepare.seen_images == 1000


def test_named_extra_losses_are_logged_and_a_rewind_resets_the_optimizer(toys, tiny_cfg):
    ToyHooks.adam_steps = {}
    metrics = run(tiny_cfg("method=toy_hooks", "epochs=2", "logger._target_=tests.test_protocol.Recorder"))
    epochs = [v for v in Recorder.logged if "epoch" in v]
    assert len(epochs) == 2
    for values in epochs:
        assert values["train/toy_l2"] > 0 and values["train/toy_half"] == pytest.approx(0.5)
        assert "train/toy_logit_mean" in values
        assert values["train/loss"] == pytest.approx(values["train/loss_task"] + values["train/toy_l2"] + 0.5,
                                                      rel=1e-5)
    steps = len(range(0, 1000 - 63, 64))  # drop_last batches of 64 over train800val200
    assert ToyHooks.adam_steps == {1: steps, 2: steps}  # the second epoch ran on a fresh optimizer
    assert metrics["params"]["trainable_without_head"] == 0


def test_init_run_starts_exactly_from_the_source_runs_modules(tiny_cfg, monkeypatch):
    source_cfg = tiny_cfg("method=lora", "epochs=1", "optimizer.lr=0.05")
    source = run(source_cfg)
    source_dir = Path(source_cfg.paths.run_dir)
    weights = load_file(source_dir / "trainable.safetensors")

    first = {}
    train_epoch = Trainer._train_epoch

    def snapshot(self, epoch, *args):
        if not first:
            first.update({k: v.clone() for k, v in self.adaptation.state(self.model).items()})
        return train_epoch(self, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", snapshot)
    cfg = tiny_cfg("method=lora", "init=run", f"init.source.run_dir={source_dir}", "epochs=1")
    metrics = run(cfg)
    lora = [k for k in weights if "lora_" in k]
    assert lora and all(torch.equal(first[k], weights[k]) for k in lora)
    assert not torch.equal(first["head.weight"], weights["head.weight"])  # the head starts fresh
    assert metrics["method_label"] == "lora+init" and Path(cfg.paths.run_dir).parts[-4] == "lora+init"
    provenance = metrics["provenance"]["techniques"]["init"]
    assert provenance["source_config_hash"] == source["provenance"]["config_hash"]
    assert provenance["source_where"] == str(source_dir)


@pytest.mark.parametrize("overrides, message", [
    (["method=adaptformer"], "is a run of method 'lora', not 'adaptformer'"),
    (["method=lora", "method.rank=4"], "is (8, 64) in"),
])
def test_init_run_of_another_method_or_shape_is_one_line(overrides, message, tiny_cfg, tmp_path):
    source_cfg = tiny_cfg("method=lora", "epochs=1")
    run(source_cfg)
    out = run_cli("train.py", "dataset=digits", "backbone=vit_test", "logger=none", "epochs=1",
                  f"paths.runs={tmp_path / 'target'}", *overrides, "init=run",
                  f"init.source.run_dir={source_cfg.paths.run_dir}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: init: ") and message in lines[0], out.stderr
    assert not [p for p in (tmp_path / "target").rglob("*") if p.is_file() and p.suffix != ".log"]  # nothing half-made
