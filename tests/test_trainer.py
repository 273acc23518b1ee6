"""The optimiser and the schedule the runner builds from conf/."""

from __future__ import annotations

import pytest
import torch

from data import DecodeCache, build_task
from runners.backbone import build_backbone
from runners.job import build_adaptation
from runners.schedule import cosine_with_warmup
from runners.trainer import Trainer


def trainer_for(cfg, tmp_path) -> Trainer:
    task = build_task(cfg.dataset, cfg.protocol, cfg.pipeline, cfg.backbone.image_size,
                      DecodeCache(cfg.data.cache_dir))
    model = build_backbone(cfg.backbone, task.num_classes)
    adaptation = build_adaptation(cfg)
    model, _ = adaptation.build(model)
    return Trainer(cfg, model, adaptation, task, torch.device("cpu"), tmp_path, "test")


def test_no_weight_decay_on_ssf_vectors_and_biases(tiny_cfg, tmp_path):
    # SSF pitfall: AdamW over every trainable tensor decays γ towards 0; only head.weight may decay
    trainer = trainer_for(tiny_cfg("method=ssf", "optimizer.weight_decay=0.05"), tmp_path)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"head.weight"}
    plain = trainer_for(tiny_cfg("method=ssf", "optimizer.weight_decay=0.05", "weight_decay_1d=true"), tmp_path)
    assert all(g["weight_decay"] == 0.05 for g in plain.optimizer.param_groups)


def test_sgd_from_conf(tiny_cfg, tmp_path):
    trainer = trainer_for(tiny_cfg("method=linear", "optimizer=sgd", "optimizer.lr=0.3"), tmp_path)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.defaults["momentum"] == 0.9 and trainer.optimizer.defaults["lr"] == 0.3


def test_cosine_with_linear_warmup_per_iteration():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = cosine_with_warmup(opt, steps_per_epoch=10, epochs=10, warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-6)

    def lr_at(step):
        sched.step_update(step)
        return opt.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-4)
    assert lr_at(10) == pytest.approx(1e-4 + (0.1 - 1e-4) / 2)  # halfway through the 20 warm-up steps
    assert lr_at(20) == pytest.approx(1e-6 + (0.1 - 1e-6) * 0.5 * (1 + torch.cos(torch.tensor(0.2 * torch.pi))))
    assert lr_at(100) == pytest.approx(1e-6)
    assert lr_at(40) > lr_at(41)  # decays every iteration, not every epoch
