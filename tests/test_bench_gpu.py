"""`scripts/bench.py gpu` on CPU with the tiny model, the synthetic data it runs on, and its official-SSF plumbing."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from data import build_task
from data.vtab_tfds import TEST_SIZES
from runners import compose
from scripts import bench
from tests.conftest import run_cli


@pytest.mark.parametrize("like, protocol, train, evaluated, classes", [
    ("cifar", "final", 1000, 10_000, 100), ("cifar", "tune", 800, 200, 100), ("kitti", "final", 1000, 711, 4)])
def test_synthetic_data_has_the_real_sizes(like, protocol, train, evaluated, classes):
    cfg = compose(["dataset=synthetic", f"dataset.like={like}", "backbone=vit_test"])
    task = build_task(cfg.dataset, protocol, cfg.pipeline, cfg.backbone.image_size)
    assert (len(task.train), len(task.eval), task.num_classes) == (train, evaluated, classes)
    assert task.train.images.shape[1:] == (3, 32, 32) and task.benchmark == "synthetic"
    assert task.meta["data_format"].startswith("synthetic") and task.meta["synthetic"]["like"] == like
    assert set(task.train.labels.tolist()) == set(range(classes))
    again = build_task(cfg.dataset, protocol, cfg.pipeline, cfg.backbone.image_size)
    assert again.train.images.equal(task.train.images) and again.eval.labels.equal(task.eval.labels)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                    reason="needs the parallel extra (hydra-joblib-launcher): make install")
def test_bench_gpu_on_cpu_prints_the_table_and_the_ratio(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("scripts/bench.py", "gpu", "--backbone", "vit_test", "--epochs", "2", "--table-epochs", "1",
                     "--tasks", "2", "--runs-per-gpu", "2", "--compile", "none", "default", "--out", str(out),
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("(a) cifar, train.py", "(a) cifar, train.py compile=default", "(b) 2 tasks, train.py -m",
                 "runner / bare", "best runs at once: 2", "compile=default / eager on cifar, speed: wall time ×",
                 "the 2 tasks at 2 epochs compute", "official SSF: skipped: no --ssf-repo"):
        assert line in result.stdout
    numbers = json.loads(out.read_text())
    a, compiled, b = numbers["rows"]
    assert a["eval_images"] == TEST_SIZES["cifar"] and a["train_images"] == 2 * 960  # 15 batches of 64 an epoch
    assert (a["compile"], compiled["compile"]) == ("none", "default") and compiled["train_images"] == a["train_images"]
    assert b["compile"] == numbers["best_single"]["compile"] and set(numbers["compile"]) == {"default"}
    assert b["eval_images"] == TEST_SIZES["cifar"] + TEST_SIZES["caltech101"] and b["runs_at_once"] == 2
    assert numbers["runner_over_bare"] > 0 and numbers["peak_tflops"] is None  # no bf16 peak on a CPU
    train_flops = b["train_images"] * numbers["training_gflops_per_image"] * 1e9
    eval_flops = b["tflops_per_s"] * 1e12 * b["wall_seconds"] - train_flops  # (b) ran 1 epoch, projected to 2
    assert b["projected_flops"] == pytest.approx(2 * train_flops + eval_flops, rel=1e-9) and eval_flops > 0


STUB_SSF = '''
import argparse, pathlib, sys
import ipdb  # as SSF's train.py does
from PIL import Image
parser = argparse.ArgumentParser()
parser.add_argument("data_dir")
parser.add_argument("--dataset")
parser.add_argument("--num-classes", type=int)
parser.add_argument("--img-size", type=int)
args, _ = parser.parse_known_args()
root = pathlib.Path(args.data_dir)
for split, size in (("train800val200", 1000), ("test", {test})):
    lines = (root / f"{{split}}.txt").read_text().splitlines()
    assert len(lines) == size, (split, len(lines))
    for line in lines:  # SSF's VTAB reader: `relative/path label`, joined with the folder
        path, label = line.split(" ")
        assert 0 <= int(label) < args.num_classes
    assert Image.open(root / path).size == (args.img_size, args.img_size)
assert args.dataset == "pets", args.dataset
print("Train: 0 [  14/14 (100%)]  Loss: 3.6 (3.6)  Time: 0.100s,  640.00/s  (0.100s,  640.00/s)", file=sys.stderr)
'''


def test_official_ssf_reads_the_synthetic_task_in_the_noah_layout(tmp_path):
    (tmp_path / "train.py").write_text(STUB_SSF.format(test=TEST_SIZES["oxford_iiit_pet"]))
    result = bench.official_ssf(tmp_path, sys.executable, "oxford_iiit_pet", 1, 64, 32, "vit_base_patch16_224_in21k")
    assert result["train_loop_images_per_s"] == 640.0 and result["images_per_s"] > 0
    assert "--dataset pets --num-classes 37" in result["command"]
