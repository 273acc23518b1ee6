"""Training throughput of the runner against a bare timm loop: same model, data, batch and optimizer.

    python scripts/bench.py                               # CPU: vit_test on digits, SSF
    python scripts/bench.py --backbone vit_b16_in21k      # GPU: ViT-B/16 at 224², bf16 (random weights)

Both loops run in this process, alternately, `--repeats` times each; the best images/s of each is
kept, and the ratio runner/bare is the runner's overhead (target ≥ 0.95). On CUDA it also prints the
model FLOP utilisation against the GPU's bf16 dense peak (`--peak-tflops`).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
import torch.nn.functional as F

from data import build_task
from data.loader import DeviceLoader
from methods import create_method
from runners import compose, run
from runners.backbone import build_backbone, resolve_device
from runners.report import count_params, gmacs_per_image, peak_memory


def bare_loop(cfg, device: torch.device, epochs: int) -> float:
    """The same training as the runner's, written as the shortest timm loop; train images/s."""
    torch.manual_seed(cfg.seed)
    bb = cfg.backbone
    task = build_task(cfg.dataset, cfg.protocol, bb.image_size, bb.interpolation)
    model = build_backbone(bb, task.num_classes, load_weights=False)
    create_method(**cfg.method).attach(model)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay, **fused)
    loader = DeviceLoader(task.train, cfg.batch_size, device, bb.mean, bb.std, shuffle=True, drop_last=True)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        for x, y in loader:
            with amp:
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        seconds += time.perf_counter() - t0
        images += loader.images_per_epoch
    return images / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_test")
    parser.add_argument("--method", default="ssf")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as runs:
        overrides = [f"backbone={args.backbone}", "backbone.pretrained=false", "backbone.checkpoint=null",
                     f"method={args.method}", "dataset=digits", f"batch_size={args.batch_size}",
                     f"epochs={args.epochs}", "scheduler.warmup_epochs=1", "logger=none", f"device={device}",
                     f"paths.runs={runs}", "force=true"]
        cfg = compose(overrides)
        runner, bare = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(cfg, device, args.epochs))
            runner.append(run(cfg)["train_images_per_s"])
        memory, kind = peak_memory(device)

    with torch.device("meta"):
        model = build_backbone(cfg.backbone, 10, load_weights=False)
        create_method(args.method).attach(model)
    gmacs = gmacs_per_image(model, cfg.backbone.image_size, "meta")
    trainable = count_params(model).trainable_with_head
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads)")
    print(f"model: {args.backbone} + {args.method} at {cfg.backbone.image_size}², batch {args.batch_size}, "
          f"{trainable:,} trainable, {gmacs:.3f} GMACs/image")
    print(f"bare timm loop: {max(bare):.1f} images/s (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"vpeft runner:   {max(runner):.1f} images/s (runs: {', '.join(f'{v:.1f}' for v in runner)})")
    print(f"runner / bare:  {max(runner) / max(bare):.3f}")
    print(f"peak memory:    {memory:.0f} MiB ({kind})")
    if device.type == "cuda":
        # forward + backward ≈ 3 forward passes, 2 FLOPs per multiply-add
        tflops = max(runner) * gmacs * 2 * 3 / 1e3
        print(f"model FLOP utilisation: {tflops:.1f} TFLOP/s = {100 * tflops / args.peak_tflops:.1f}% "
              f"of {args.peak_tflops:.0f} TFLOP/s bf16 peak")


if __name__ == "__main__":
    main()
