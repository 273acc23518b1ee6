"""A tiny model really learns: the demo's recipe on digits, well above chance (10%)."""

from __future__ import annotations

import pytest

from scripts.demo import adapt

WELL_ABOVE_CHANCE = 50.0  # 5× chance on 10 classes; the demo measures ≈ 83% (SSF) and ≈ 96% (full)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssf", "full"])
def test_demo_backbone_adapts_to_digits(method, demo_backbone, tmp_path):
    metrics = adapt(method, demo_backbone, tmp_path)
    assert metrics["top1"] >= WELL_ABOVE_CHANCE
    assert metrics["provenance"]["weights"] == f"file:{demo_backbone.resolve()}"


@pytest.mark.slow
def test_pretraining_learned_its_source_task(demo_backbone):
    import json

    metrics = json.loads((demo_backbone.parent / "metrics.json").read_text())
    assert metrics["task"] == "digits_rotation" and metrics["top1"] >= 80.0  # chance: 25%


SEED_METHODS = {  # the data-dependent seed methods, as a user would first try them on the demo backbone
    "sct": ["optimizer.lr=1e-2"],  # ≈ 66% (linear probing: ≈ 51%)
    "spt": ["optimizer.lr=1e-2", "method.budget=0.01", "method.scan_step=0.0005", "method.scan_max=0.05"],  # ≈ 89%
    "e2vpt": ["optimizer=sgd", "optimizer.lr=0.5"],  # ≈ 62%, with its paper's optimizer
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SEED_METHODS))
def test_seed_methods_learn_digits_from_the_demo_backbone(method, demo_backbone, tmp_path):
    from runners import compose, run

    metrics = run(compose(["dataset=digits", "backbone=vit_test", "epochs=20", "scheduler.warmup_epochs=1",
                           "logger=none", f"method={method}", f"backbone.checkpoint={demo_backbone}",
                           f"paths.runs={tmp_path}", *SEED_METHODS[method]]))
    assert metrics["top1"] >= WELL_ABOVE_CHANCE


@pytest.mark.parametrize("method, extra", [("sct", []), ("spt", SEED_METHODS["spt"][1:]),
                                           ("e2vpt", ["method.stage=search"]), ("dyt", []), ("hst", [])])
def test_seed_methods_run_through_train_py(method, extra, tmp_path):
    import json

    from tests.conftest import run_cli
    from tests.test_method_table import FIELDS

    out = run_cli("train.py", "dataset=digits", "backbone=vit_test", "logger=none", "epochs=2", f"method={method}",
                  f"paths.runs={tmp_path}", *extra, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert FIELDS <= metrics.keys() and metrics["method"] == method and metrics["method_report"] is not None
