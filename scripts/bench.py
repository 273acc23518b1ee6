"""Benchmarks, each against a baseline measured in the same process.

    python scripts/bench.py runner                          # CPU: vit_test on digits, SSF
    python scripts/bench.py runner --backbone vit_b16_in21k # GPU: ViT-B/16 at 224², bf16 (random weights)
    python scripts/bench.py data                            # decode-once cache against PIL every epoch
    python scripts/bench.py dyt                             # DyT's token dispatch against every token, inference
    python scripts/bench.py memory                          # activation memory with and without memory=velora

`runner`: training images/s of the runner against a bare timm loop (same model, data, batch, AdamW),
alternately `--repeats` times each, best of each kept; the ratio runner/bare is the runner's overhead
(target ≥ 0.95). On CUDA it also prints the model FLOP utilisation against the bf16 dense peak.

`data`: a generated VTAB-1k-like task (1,000 JPEG photos-sized images) read at 224² — the first epoch
(decode and cache), later epochs (from the cache) and a torch DataLoader that decodes with PIL every
epoch (as NOAH-lineage code does), with `--workers` processes. Target: later epochs ≥ 5× faster. With
`--model`, also the share of a training step spent waiting for its batch, read through the runner's loader for
`--pipeline` (per-sample augmentation in `--workers` processes where the pipeline has it). Target: under 5 %.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import DecodeCache, build_task
from data.loader import DeviceLoader
from methods import create_method
from runners import compose, run
from runners.backbone import build_backbone, resolve_device
from runners.report import count_params, gmacs_at_size, gmacs_per_image, peak_memory


def bare_loop(cfg, device: torch.device, epochs: int) -> float:
    """The same training as the runner's, written as the shortest timm loop; train images/s."""
    torch.manual_seed(cfg.seed)
    bb = cfg.backbone
    task = build_task(cfg.dataset, cfg.protocol, cfg.pipeline, bb.image_size, DecodeCache(cfg.data.cache_dir))
    model = build_backbone(bb, task.num_classes, load_weights=False)
    create_method(**cfg.method).attach(model)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay, **fused)
    loader = DeviceLoader(task.train, cfg.batch_size, device, cfg.pipeline.mean, cfg.pipeline.std, shuffle=True,
                          drop_last=True)
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


def bench_runner(args: argparse.Namespace) -> None:
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
    gmacs = gmacs_at_size(model, cfg.backbone.image_size, "meta")
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


class _PilEveryEpoch(torch.utils.data.Dataset):
    """The baseline: open, decode, resize and normalise every image on every access."""

    def __init__(self, entries, size: int):
        from torchvision import transforms

        self.entries = entries
        self.transform = transforms.Compose([
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.entries[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def _write_images(folder: Path, n: int) -> list[tuple[Path, int]]:
    """n smooth random 500×375 JPEGs (the size of a typical VTAB natural image), 10 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    entries = []
    for i in range(n):
        small = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.Resampling.BILINEAR)
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        entries.append((path, i % 10))
    return entries


def bench_data(args: argparse.Namespace) -> None:
    from data import DecodeCache, Geometry

    device = resolve_device(args.device)
    size = args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        entries = _write_images(Path(tmp) / "images", args.images)
        cache = DecodeCache(Path(tmp) / "cache", workers=args.workers)
        geometry = Geometry(size)

        def epoch(split) -> float:
            loader = DeviceLoader(split, args.batch_size, device, [0.5] * 3, [0.5] * 3, shuffle=True)
            _sync(device)
            t0 = time.perf_counter()
            for x, _ in loader:
                x.sum()
            _sync(device)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        split = cache.load("bench", "train", entries, geometry)
        first = time.perf_counter() - t0 + epoch(split)
        later = [epoch(cache.load("bench", "train", entries, geometry)) for _ in range(args.epochs)]

        pil = torch.utils.data.DataLoader(_PilEveryEpoch(entries, size), batch_size=args.batch_size, shuffle=True,
                                          num_workers=args.workers, persistent_workers=args.workers > 0)
        baseline = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            for x, _ in pil:
                x.to(device).sum()
            _sync(device)
            baseline.append(time.perf_counter() - t0)

        n = len(entries)
        print(f"device: {device}; {n} JPEGs 500x375 -> {size}x{size}, batch {args.batch_size}, "
              f"{args.workers} decode workers")
        print(f"first epoch (decode + cache):  {n / first:8.1f} images/s")
        print(f"later epochs (from the cache): {n / min(later):8.1f} images/s")
        print(f"PIL decode every epoch:        {n / min(baseline):8.1f} images/s")
        print(f"later / PIL:                   {min(baseline) / min(later):8.1f}x")
        if args.model:
            _data_wait(args, device, Path(tmp), entries)


def _data_wait(args: argparse.Namespace, device: torch.device, tmp: Path, entries: list[tuple[Path, int]]) -> None:
    """The share of a training step spent waiting for its batch, the generated images laid out as a VTAB-1k
    task and read through the runner's own loader for `--pipeline` (its per-sample augmentation included)."""
    from data.loader import train_loader
    from runners.trainer import task_loss

    folder = tmp / "data" / "vtab-1k" / "dtd"
    folder.mkdir(parents=True)
    lines = "".join(f"{path} {i % 47}\n" for i, (path, _) in enumerate(entries))
    for split in ("train800val200", "test"):
        (folder / f"{split}.txt").write_text(lines)
    cfg = compose([f"backbone={args.model}", "backbone.pretrained=false", "method=ssf", "logger=none",
                   "dataset=vtab/dtd", f"pipeline={args.pipeline}", f"paths.data_dir={tmp / 'data'}",
                   f"paths.cache_dir={tmp / 'cache'}", f"batch_size={args.batch_size}"])
    task = build_task(cfg.dataset, "final", cfg.pipeline, cfg.backbone.image_size, DecodeCache(tmp / "cache"))
    model = build_backbone(cfg.backbone, task.num_classes, load_weights=False)
    create_method("ssf").attach(model)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    loader = train_loader(task, args.batch_size, device, cfg.pipeline, seed=0, workers=args.workers)
    loss_fn = task_loss(0.0)
    waiting = stepping = 0.0
    for epoch in range(2):
        loader.set_epoch(epoch)
        it = iter(loader)
        while True:
            _sync(device)
            t0 = time.perf_counter()
            batch = next(it, None)
            _sync(device)
            t1 = time.perf_counter()
            if batch is None:
                break
            with amp:
                loss = loss_fn(model(batch[0]), batch[1])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if epoch:  # the first epoch starts the workers
                waiting, stepping = waiting + t1 - t0, stepping + time.perf_counter() - t1
    print(f"{args.model} + SSF at {cfg.backbone.image_size}², pipeline {args.pipeline} "
          f"({task.meta['train_preprocessing']}), {args.workers} augmentation workers: "
          f"{100 * waiting / (waiting + stepping):.2f}% of step time waiting for the batch")


class _KeepAtRate(torch.nn.Module):
    """A dispatcher keeping each patch token with probability `rate` (what a trained one at that rate gives)."""

    def __init__(self, rate: float, num_prefix: int):
        super().__init__()
        self.rate, self.num_prefix = rate, num_prefix

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand(h.shape[0], h.shape[1], 1, device=h.device) < self.rate).to(h.dtype)
        mask[:, :self.num_prefix] = 1
        return mask


def bench_dyt(args: argparse.Namespace) -> None:
    """Inference images/s of DyT (the MLP on the gathered kept tokens) against the same model keeping every token."""
    from methods.dyt import DyT

    device = resolve_device(args.device)
    cfg = compose([f"backbone={args.backbone}", "backbone.pretrained=false", "backbone.checkpoint=null", "method=dyt"])
    torch.manual_seed(0)
    model = build_backbone(cfg.backbone, 100, load_weights=False)
    method = DyT()
    method.attach(model)
    model.to(device).eval()
    size = cfg.backbone.image_size
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def images_per_s() -> float:
        best = 0.0
        with torch.inference_mode(), amp:
            model(x)  # warm-up
            for _ in range(args.repeats):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    model(x)
                _sync(device)
                best = max(best, args.batches * args.batch_size / (time.perf_counter() - t0))
        return best

    with method.complete_model(model):
        full = images_per_s()
        full_gmacs = gmacs_per_image(model, [x[:8]])[0]
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads); {args.backbone} at {size}², batch {args.batch_size}")
    print(f"every token (complete model): {full:8.1f} images/s, {full_gmacs:.2f} GMACs/image")
    for rate in args.rates:
        for block in model.blocks:
            block.dyt_dispatcher = _KeepAtRate(rate, model.num_prefix_tokens)
        speed, gmacs = images_per_s(), gmacs_per_image(model, [x[:8]])[0]
        print(f"DyT, r = {rate:.1f}:              {speed:8.1f} images/s, {gmacs:.2f} GMACs/image "
              f"({speed / full:.2f}x the images/s, {gmacs / full_gmacs:.0%} of the GMACs)")


MEMORY_HOSTS = {"full": ["method=full"], "lora": ["method=lora"], "adaptformer": ["method=adaptformer"],
                "ssf (VeLoRA's placement)": ["method=ssf", "method.placement=reduced"]}


def _activation_bytes(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """What one training step keeps for the backward, in MiB: CUDA's peak allocation above the weights, or on the CPU
    the bytes of the distinct non-parameter tensors autograd saves."""
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        model.zero_grad(set_to_none=True)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(kept.values()) / 2**20


def bench_memory(args: argparse.Namespace) -> None:
    """Training activation memory of each host with and without memory=velora, on the same model and batch."""
    from runners.run import build_adaptation

    device = resolve_device(args.device)
    size = compose([f"backbone={args.backbone}"]).backbone.image_size
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    print(f"device: {device}; {args.backbone} at {size}², batch {args.batch_size}; "
          f"{'CUDA max allocated above the weights' if device.type == 'cuda' else 'bytes of saved activations'}")
    for host, overrides in MEMORY_HOSTS.items():
        row = []
        for memory in (["memory=none"], ["memory=velora", f"memory.num_groups={args.groups}"]):
            cfg = compose([f"backbone={args.backbone}", "backbone.pretrained=false", "backbone.checkpoint=null",
                           "dataset=digits", *overrides, *memory])
            torch.manual_seed(0)
            model = build_backbone(cfg.backbone, 100, load_weights=False).to(device)
            adaptation = build_adaptation(cfg)
            model, _ = adaptation.build(model)
            row.append(_activation_bytes(model, x, device))
            saving = adaptation.techniques[0].provenance() if adaptation.techniques else {}
        print(f"{host:28s} without {row[0]:9.1f} MiB · with VeLoRA {row[1]:9.1f} MiB · {row[1] / row[0]:.3f} "
              f"({saving.get('saving')}/{saving.get('wrapped')} compressed ops save memory)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    runner = sub.add_parser("runner", help="the runner against a bare timm loop")
    runner.add_argument("--backbone", default="vit_test")
    runner.add_argument("--method", default="ssf")
    runner.add_argument("--batch-size", type=int, default=64)
    runner.add_argument("--epochs", type=int, default=3)
    runner.add_argument("--repeats", type=int, default=2)
    runner.add_argument("--device", default="auto")
    runner.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    data = sub.add_parser("data", help="the decode-once cache against PIL decoding every epoch")
    data.add_argument("--images", type=int, default=1000)
    data.add_argument("--image-size", type=int, default=224)
    data.add_argument("--batch-size", type=int, default=64)
    data.add_argument("--epochs", type=int, default=2)
    data.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    data.add_argument("--device", default="auto")
    data.add_argument("--model", default=None, help="a backbone config, e.g. vit_b16_in21k, to time data waits")
    data.add_argument("--pipeline", default="default", help="the pipeline of the timed training (e.g. fgvc_ssf)")
    dyt = sub.add_parser("dyt", help="DyT's token dispatch against the same model keeping every token (inference)")
    dyt.add_argument("--backbone", default="vit_b16_in21k")
    dyt.add_argument("--batch-size", type=int, default=32)
    dyt.add_argument("--batches", type=int, default=3)
    dyt.add_argument("--repeats", type=int, default=2)
    dyt.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    dyt.add_argument("--device", default="auto")
    memory = sub.add_parser("memory", help="training activation memory of each host with and without memory=velora")
    memory.add_argument("--backbone", default="vit_b16_in21k")
    memory.add_argument("--batch-size", type=int, default=8)
    memory.add_argument("--groups", type=int, default=32)
    memory.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    {"runner": bench_runner, "data": bench_data, "dyt": bench_dyt, "memory": bench_memory}[args.bench](args)


if __name__ == "__main__":
    main()
