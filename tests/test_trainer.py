"""The optimiser and the schedule the runner builds from conf/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data import DecodeCache, build_task
from runners import compose, run
from runners.backbone import build_backbone
from runners.config import config_hash
from runners.job import build_adaptation
from runners.schedule import cosine_with_warmup
from runners.trainer import Trainer
from tests.conftest import TINY


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


@pytest.mark.slow
@pytest.mark.parametrize("method, graphs, how", [
    ("ssf", 2, "torch.compile mode=default"),  # training; the merged model's evaluation
    ("dyt", 1, "torch.compile mode=default (evaluation eager: data-dependent token counts)"),  # per-call taps
])
def test_a_compiled_run_is_the_eager_run(method, graphs, how, tmp_path):
    """compile=default runs the same run (its folder and config hash) to float rounding: training compiled once
    (all batches one shape), the evaluated model once (its last batch padded), and the provenance says so."""
    from torch._dynamo.utils import counters

    def cfg(*extra: str):
        return compose([*TINY, f"method={method}", "eval_batch_size=100", *extra])

    eager_cfg = cfg(f"paths.runs={tmp_path / 'a'}")
    compiled_cfg = cfg(f"paths.runs={tmp_path / 'b'}", "compile=default")
    assert config_hash(eager_cfg) == config_hash(compiled_cfg)
    folders = [Path(c.paths.run_dir).relative_to(tmp_path / d) for c, d in ((eager_cfg, "a"), (compiled_cfg, "b"))]
    assert folders[0] == folders[1]
    eager = run(eager_cfg)
    counters.clear()
    compiled = run(compiled_cfg)
    assert eager["provenance"]["eval_images"] % 100 != 0  # a short last batch, padded for the compiled model
    assert counters["stats"]["unique_graphs"] == graphs
    assert eager["provenance"]["compiled"] == "eager" and compiled["provenance"]["compiled"] == how
    assert abs(compiled["top1"] - eager["top1"]) <= 100 / eager["provenance"]["eval_images"]  # one image at most
    a, b = (load_file(Path(c.paths.run_dir) / "trainable.safetensors") for c in (eager_cfg, compiled_cfg))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)
