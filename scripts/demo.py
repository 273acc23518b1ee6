"""The demo: linear, BitFit, SSF and full fine-tuning on the embedded digits task, one table.

A frozen random-init backbone would make every frozen-backbone method meaningless, so the tiny ViT
(`backbone=vit_test`) is first pre-trained once, self-supervised, on a source task — predicting the
rotation (0/90/180/270°) of the digits train800 images, never their labels nor any val/test image —
and cached. The four methods then adapt that backbone to digit classification through the same
runner as `train.py`, loading it as a local checkpoint file (`backbone.checkpoint=`).

    python scripts/demo.py            # ≈ 1 min on 2 CPU cores the first time; finished runs are reused
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runners import compose, run

PRETRAIN = ["method=full", "dataset=digits_rotation", "backbone=vit_test", "epochs=20", "batch_size=128",
            "optimizer.lr=2e-3", "optimizer.weight_decay=0.05", "scheduler.warmup_epochs=2", "logger=none"]
ADAPT = ["dataset=digits", "backbone=vit_test", "epochs=20", "scheduler.warmup_epochs=1", "logger=none"]
# Frozen-backbone methods want a larger learning rate than full fine-tuning, as in the papers' recipes.
LEARNING_RATES = {"linear": 1e-2, "bitfit": 1e-2, "ssf": 1e-2, "full": 3e-3}


def pretrained_backbone(runs: Path, extra: list[str] = ()) -> Path:
    """Pre-train `vit_test` on rotation prediction once (reused when its run exists); the weights file."""
    cfg = compose([*PRETRAIN, f"paths.runs={runs}", *extra])
    run(cfg)
    return Path(cfg.paths.run_dir) / "trainable.safetensors"


def adapt(method: str, checkpoint: Path, runs: Path, extra: list[str] = ()) -> dict:
    """Adapt the pre-trained tiny backbone to digits with `method`; the run's metrics."""
    return run(compose([*ADAPT, f"method={method}", f"optimizer.lr={LEARNING_RATES[method]}",
                        f"backbone.checkpoint={checkpoint}", f"paths.runs={runs}", *extra]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=None, help="where the demo's runs go (default: <runs>/demo)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. logger=wandb")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = args.runs or Path(compose(["logger=none"]).paths.runs) / "demo"
    console = Console()

    started = time.perf_counter()
    with console.status("pre-training vit_test on digit rotations (cached after the first time)"):
        checkpoint = pretrained_backbone(runs, args.overrides)
    table = Table(title="digits (VTAB-1k layout: train800val200 → test 797), vit_test pre-trained on rotations")
    for column in ("method", "Top-1 (%)", "trainable params", "with head", "seconds"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in LEARNING_RATES:
        with console.status(f"{method}"):
            m = adapt(method, checkpoint, runs, args.overrides)
        p = m["params"]
        table.add_row(method, f"{m['top1']:.1f}", f"{p['trainable_without_head']:,}", f"{p['trainable_with_head']:,}",
                      f"{m['wall_seconds']:.1f}")
    console.print(table)
    console.print(f"runs under {runs} · {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
