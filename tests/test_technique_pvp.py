"""PVP-style init: stage U on one task, stage D on another starting from its module weights; a few-shot table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from runners import run
from runners.results import build_results, load_runs, render, select_benchmark
from runners.trainer import Trainer
from tests.conftest import run_cli
from tests.method_table import Case

UPSTREAM = ("init=pvp", "init.source.epochs=1")
CASES = [
    Case(("method=lora", *UPSTREAM), merges=True, identity_at_init=True),
    Case(("method=adaptformer", "method.bias=false", "quant=1bit", *UPSTREAM)),
    Case(("method=lora", "method.variant=qv", "quant=1bit", *UPSTREAM), merges=True),
]


def test_stage_d_starts_exactly_from_stage_us_module_weights(tiny_cfg, monkeypatch):
    first = {}
    train_epoch = Trainer._train_epoch

    def snapshot(self, epoch, *args):
        if self.task.name == "digits_target" and not first:
            first.update({k: v.clone() for k, v in self.adaptation.state(self.model).items()})
        return train_epoch(self, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", snapshot)
    cfg = tiny_cfg("dataset=digits_target", "dataset.shots=4", "method=lora", *UPSTREAM)
    metrics = run(cfg)
    provenance = metrics["provenance"]["techniques"]["init"]
    upstream = Path(provenance["source_where"])
    assert upstream.parts[-6:-2] == ("digits", "digits_source", "lora-upstream", "vit_test")
    assert upstream.name == "seed42"
    assert json.loads((upstream / "metrics.json").read_text())["epochs"] == 1
    weights = load_file(upstream / "trainable.safetensors")
    lora = [k for k in weights if "lora_" in k]
    assert lora and all(torch.equal(first[k], weights[k]) for k in lora)
    assert metrics["method_label"] == "lora+pvp" and "re-implementation" in provenance["note"]
    assert metrics["provenance"]["train_images"] == 20  # 4 shots × 5 classes


def test_a_few_shot_sweep_puts_random_and_pretrained_init_side_by_side(tmp_path):
    out = run_cli("train.py", "-m", "dataset=digits_target", "dataset.shots=1,4", "init=none,pvp", "method=lora",
                  "backbone=vit_test", "logger=none", "epochs=1",
                  "scheduler.warmup_epochs=0", f"paths.runs={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    bench, runs = select_benchmark(load_runs(tmp_path / "digits_fewshot"), None)
    results = build_results(runs, bench)
    assert [r.run_name for r in results.rows] == ["lora", "lora+pvp"]
    assert bench.tasks == ("digits_target 1-shot", "digits_target 4-shot")
    assert all(line.values[t].mean is not None for line in results.lines for t in bench.tasks)
    assert "pvp: PVP-style re-implementation" in render(results, "markdown")
