"""Benchmarks, each against a baseline measured in the same process.

    python scripts/bench.py runner                          # CPU: vit_test on digits, SSF
    python scripts/bench.py runner --backbone vit_b16_in21k # GPU: ViT-B/16 at 224², bf16 (random weights)
    python scripts/bench.py data                            # decode-once cache against PIL every epoch
    python scripts/bench.py dyt                             # DyT's token dispatch against every token, inference
    python scripts/bench.py memory                          # activation memory with and without memory=velora
    python scripts/bench.py gpu                             # GPU: one task, the VTAB-1k table, official SSF code
    python scripts/bench.py gpu --backbone vit_test --epochs 1 --tasks 2   # the same on CPU, in a minute

`runner`: training images/s of the runner against a bare timm loop (same model, data, batch, AdamW),
alternately `--repeats` times each, best of each kept; the ratio runner/bare is the runner's overhead
(target ≥ 0.95). On CUDA it also prints the model FLOP utilisation against the bf16 dense peak.

`data`: a generated VTAB-1k-like task (1,000 JPEG photos-sized images) read at 224² — the first epoch
(decode and cache), later epochs (from the cache) and a torch DataLoader that decodes with PIL every
epoch (as NOAH-lineage code does), with `--workers` processes. Target: later epochs ≥ 5× faster. With
`--model`, also the share of a training step spent waiting for its batch, read through the runner's loader for
`--pipeline` (per-sample augmentation in `--workers` processes where the pipeline has it). Target: under 5 %.

`gpu`: `train.py` end to end on synthetic data in VTAB-1k's real split sizes (`dataset=synthetic`, random-init
backbone: no dataset, no weights) — (a) one task for `--epochs` with each `--compile` mode (the first the
baseline; wall time and the median epoch's speed against it), its training loop against the bare timm loop;
(b) the `--tasks` first tasks of the VTAB-1k table for `--table-epochs` with the fastest mode of (a), `n` runs at
once for each `n` of `--runs-per-gpu` (`hydra/launcher=parallel`), the best `n` kept and the table's time projected
to `--epochs`;
(c) with `--ssf-repo`, the official SSF `train.py` on the same task, epochs and images, for the ratio of wall times.
Wall time, images/s (training and evaluation), FLOP/s against `--peak-tflops` (bf16 dense) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data import DecodeCache, build_task
from data.loader import DeviceLoader
from data.vtab import VTAB_TASKS, vtab_task
from methods import create_method
from runners import compose, run
from runners.backbone import build_backbone, resolve_device
from runners.config import COMPILE_MODES, PROJECT_ROOT
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
    from runners.job import build_adaptation

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


def _synthetic(args: argparse.Namespace, device: torch.device, epochs: int, runs: str | Path,
               compile_mode: str = "none") -> list[str]:
    """The overrides of a run on synthetic data with a random-init backbone, its folders under `runs`."""
    return [f"backbone={args.backbone}", "backbone.pretrained=false", "backbone.checkpoint=null",
            f"method={args.method}", "dataset=synthetic", f"epochs={epochs}", f"batch_size={args.batch_size}",
            f"compile={compile_mode}", "logger=none", f"device={device}", f"paths.runs={runs}",
            f"paths.cache_dir={runs}/cache"]


def training_flops(cfg) -> float:
    """FLOPs of one training step per image, forward and backward as autograd runs them (frozen weights get no
    weight gradient), counted on the meta device (no weights)."""
    size = cfg.backbone.image_size
    with torch.device("meta"):
        model = build_backbone(cfg.backbone, 100, load_weights=False)
        create_method(**cfg.method).attach(model)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device="meta")).float().sum().backward()
    return counter.get_total_flops()


def timed_sweep(args: argparse.Namespace, device: torch.device, tasks: list[str], epochs: int, jobs: int,
                train_flops: float, peak_tflops: float | None, compile_mode: str = "none") -> dict:
    """`train.py -m` over `tasks` (synthetic, in their sizes), `jobs` runs at once: its wall time, images/s
    (training and evaluation) and FLOP/s over that time, the largest peak memory of a run, and the wall time
    projected to `args.epochs` (each run's fixed costs as measured, compilation included, plus its median epoch
    for each further epoch); the training loop's images/s over all epochs and in the median epoch (steady). The
    median leaves out the first epoch, which holds compilation and warm-up, where there is a later one."""
    with tempfile.TemporaryDirectory() as runs:
        launcher = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
        command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m",
                   *_synthetic(args, device, epochs, runs, compile_mode), f"dataset.like={','.join(tasks)}", *launcher]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        metrics = [json.loads(p.read_text()) for p in Path(runs).rglob("metrics.json")]
    if done.returncode or len(metrics) != len(tasks):
        sys.exit(f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    train = sum(round(m["train_images_per_s"] * m["train_seconds"]) for m in metrics)
    evaluated = sum(m["provenance"]["eval_images"] for m in metrics)
    eval_flops = sum(m["provenance"]["eval_images"] * 2e9 * m["gmacs_per_image"] for m in metrics)
    flops = train * train_flops + eval_flops
    median = [statistics.median(m["train_epoch_seconds"][1:] or m["train_epoch_seconds"]) for m in metrics]
    scaled = sum(m["wall_seconds"] + t * (args.epochs - epochs) for m, t in zip(metrics, median, strict=True))
    tflops = flops / wall / 1e12
    return {"tasks": tasks, "epochs": epochs, "runs_at_once": jobs, "compile": compile_mode, "wall_seconds": wall,
            "train_images": train, "eval_images": evaluated, "images_per_s": (train + evaluated) / wall,
            "tflops_per_s": tflops, "peak_fraction": tflops / peak_tflops if peak_tflops else None,
            "peak_memory_mib": max(m["peak_memory_mib"] for m in metrics),
            "peak_memory_kind": metrics[0]["peak_memory_kind"],
            "train_loop_images_per_s": train / sum(m["train_seconds"] for m in metrics),
            "steady_images_per_s": train / sum(t * epochs for t in median),
            "projected_wall_seconds": wall * scaled / sum(m["wall_seconds"] for m in metrics),
            "projected_flops": train * train_flops * args.epochs / epochs + eval_flops}


SSF_MODELS = {"vit_b16_in21k": "vit_base_patch16_224_in21k", "vit_b16_augreg_in21k": "vit_base_patch16_224_in21k"}
SSF_DATASETS = {"cifar": "cifar100", "oxford_flowers102": "flowers102", "oxford_iiit_pet": "pets"}  # its --dataset
# SSF's train.py imports ipdb, a debugger it never calls: a stand-in module where it is not installed.
_SSF_MAIN = ("import runpy, sys, types\ntry:\n    import ipdb\nexcept ImportError:\n"
             "    sys.modules['ipdb'] = types.ModuleType('ipdb')\n"
             "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')")


def write_noah(task: str, size: int, root: Path) -> Path:
    """The synthetic task as JPEG files in the NOAH layout SSF reads (`train800val200.txt`, `test.txt`: `path label`
    lines under the task's folder). A split repeats its first `DISTINCT` images, so only those are written."""
    from PIL import Image

    from data import Geometry
    from data.synthetic import DISTINCT, SyntheticSource

    source = SyntheticSource(task)
    folder = root / "vtab-1k" / source.task.name
    for name in ("train800val200", "test"):
        split = source.load(name, Geometry(size))
        (folder / "images" / name).mkdir(parents=True)
        pixels = split.images[:DISTINCT].permute(0, 2, 3, 1).numpy()

        def save(i: int, name=name, pixels=pixels) -> None:
            Image.fromarray(pixels[i]).save(folder / "images" / name / f"{i:06d}.jpg", quality=95)

        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(save, range(len(pixels))))
        (folder / f"{name}.txt").write_text("".join(f"images/{name}/{i % DISTINCT:06d}.jpg {y}\n"
                                                    for i, y in enumerate(split.labels.tolist())))
    return folder


def official_ssf(repo: str | Path, python: str, task: str, epochs: int, batch_size: int, size: int,
                 model: str) -> dict:
    """SSF's own `train.py` (dongzelian/SSF, as its `train_scripts/vit/vtab/cifar_100/train_ssf.sh` runs it, with its
    2 GPUs × 32 as one batch of `batch_size` and random init instead of `--pretrained`) on the synthetic task, read
    from JPEG files; its wall time, and its training images/s as its log gives them for the last epoch. As written,
    it evaluates on the test split after every epoch and saves a checkpoint of the whole model."""
    info = vtab_task(task)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_noah(info.name, size, Path(tmp))
        test_images = len((folder / "test.txt").read_text().splitlines())
        command = [*shlex.split(python), "-c", _SSF_MAIN, "train.py", str(folder),
                   "--dataset", SSF_DATASETS.get(info.name, info.name), "--num-classes", str(info.num_classes),
                   "--no-aug", "--direct-resize", "--model", model, "--batch-size", str(batch_size),
                   "--epochs", str(epochs), "--opt", "adamw", "--weight-decay", "5e-5", "--warmup-lr", "1e-7",
                   "--warmup-epochs", "10", "--lr", "5e-3", "--min-lr", "1e-8", "--drop-path", "0",
                   "--img-size", str(size), "--mixup", "0", "--cutmix", "0", "--smoothing", "0",
                   "--output", str(Path(tmp) / "output"), "--amp", "--tuning-mode", "ssf"]
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    if done.returncode:
        sys.exit(f"the official SSF train.py failed (exit {done.returncode}):\n{log[-3000:]}")
    rates = re.findall(r"\(\s*[\d.]+s,\s*([\d.]+)/s\)", log)  # its per-batch log: (mean time s, mean images/s)
    images = epochs * (1000 // batch_size * batch_size + test_images)  # drop_last training, evaluation every epoch
    return {"tasks": [task], "epochs": epochs, "runs_at_once": 1, "wall_seconds": wall, "images_per_s": images / wall,
            "train_loop_images_per_s": float(rates[-1]) if rates else None, "command": shlex.join(command)}


def bench_gpu(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    peak = args.peak_tflops if cuda else None
    tasks = [t.name for t in VTAB_TASKS][:args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([*_synthetic(args, device, args.epochs, tmp), f"dataset.like={args.task}"])
        flops = training_flops(cfg)
        out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
               "threads": torch.get_num_threads(), "backbone": args.backbone, "method": args.method,
               "image_size": cfg.backbone.image_size, "batch_size": args.batch_size,
               "training_gflops_per_image": flops / 1e9, "peak_tflops": peak, "rows": []}
        rows = out["rows"]
        if "a" in args.parts:
            single = [{"name": f"(a) {args.task}, train.py" + ("" if mode == "none" else f" compile={mode}"),
                       **timed_sweep(args, device, [args.task], args.epochs, 1, flops, peak, mode)}
                      for mode in args.compile]
            rows += single
            out["bare_loop_images_per_s"] = bare_loop(cfg, device, min(args.epochs, 10))
            out["runner_over_bare"] = single[0]["train_loop_images_per_s"] / out["bare_loop_images_per_s"]
            out["best_single"] = min(single, key=lambda r: r["wall_seconds"])
            out["compile"] = {r["compile"]: {"wall": single[0]["wall_seconds"] / r["wall_seconds"],
                                             "steady": r["steady_images_per_s"] / single[0]["steady_images_per_s"]}
                              for r in single[1:]}
    compile_mode = out["best_single"]["compile"] if "best_single" in out else args.compile[0]
    if "b" in args.parts:
        table = [{"name": f"(b) {len(tasks)} tasks, train.py -m",
                  **timed_sweep(args, device, tasks, args.table_epochs or args.epochs, n, flops, peak, compile_mode)}
                 for n in args.runs_per_gpu]
        rows += table
        out["best"] = min(table, key=lambda r: r["wall_seconds"])
    model = SSF_MODELS.get(args.backbone)
    if "c" in args.parts and args.ssf_repo and model:
        rows.append({"name": f"(c) {args.task}, official SSF train.py", **official_ssf(
            args.ssf_repo, args.ssf_python, args.task, args.epochs, args.batch_size, out["image_size"], model)})
        if "best_single" in out:
            out["ssf_over_runner"] = rows[-1]["wall_seconds"] / out["best_single"]["wall_seconds"]
    elif "c" in args.parts:
        out["ssf"] = (f"skipped: the official SSF code has no model for backbone {args.backbone}" if args.ssf_repo
                      else "skipped: no --ssf-repo (a checkout of dongzelian/SSF)")
    _print_gpu(out, args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


def _print_gpu(out: dict, args: argparse.Namespace) -> None:
    def cell(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    print(f"device: {out['device']} ({out['device_name']}, {out['threads']} threads); {out['backbone']} + "
          f"{out['method']} at {out['image_size']}², batch {out['batch_size']}, synthetic data in VTAB-1k sizes; "
          f"training {out['training_gflops_per_image']:.2f} GFLOP/image; bf16 peak "
          f"{cell(out['peak_tflops'], '.0f')} TFLOP/s")
    print(f"{'':46s} {'epochs':>6s} {'at once':>7s} {'wall s':>8s} {'images/s':>9s} {'TFLOP/s':>8s} {'% peak':>6s} "
          f"{'peak MiB':>9s}")
    for r in out["rows"]:
        fraction = None if r.get("peak_fraction") is None else 100 * r["peak_fraction"]
        print(f"{r['name']:46s} {r['epochs']:6d} {r['runs_at_once']:7d} {r['wall_seconds']:8.1f} "
              f"{r['images_per_s']:9,.0f} {cell(r.get('tflops_per_s'), '8.3f')} {cell(fraction, '6.1f'):>6s} "
              f"{cell(r.get('peak_memory_mib'), '9,.0f'):>9s}")
    for mode, ratio in out.get("compile", {}).items():
        print(f"compile={mode} / eager on {args.task}, speed: wall time ×{ratio['wall']:.2f} (compilation included), "
              f"training loop ×{ratio['steady']:.2f} (median epoch)")
    if "runner_over_bare" in out:
        speed = out["rows"][0]["train_loop_images_per_s"]
        tflops = speed * out["training_gflops_per_image"] / 1e3
        share = f" = {100 * tflops / out['peak_tflops']:.1f}% of the peak" if out["peak_tflops"] else ""
        print(f"training loop on {args.task}: runner {speed:,.0f} images/s ({tflops:.3f} TFLOP/s{share}), bare timm "
              f"loop {out['bare_loop_images_per_s']:,.0f} images/s; runner / bare {out['runner_over_bare']:.3f}")
    if "best" in out:
        best = out["best"]
        print(f"best runs at once: {best['runs_at_once']} ({len(best['tasks'])} tasks with compile={best['compile']} "
              f"in {best['wall_seconds']:.0f} s "
              f"at {best['epochs']} epochs; {best['projected_wall_seconds']:.0f} s projected at {args.epochs} epochs)")
        floor = "" if out["peak_tflops"] is None else \
            f" = {best['projected_flops'] / out['peak_tflops'] / 1e12:.0f} s at 100% of the bf16 peak"
        print(f"the {len(best['tasks'])} tasks at {args.epochs} epochs compute {best['projected_flops']:.3g} FLOP "
              f"(training and evaluation){floor}")
    if "ssf_over_runner" in out:
        print(f"official SSF / runner (compile={out['best_single']['compile']}), wall time on {args.task} at "
              f"{args.epochs} epochs: {out['ssf_over_runner']:.2f}x")
    if "ssf" in out:
        print(f"official SSF: {out['ssf']}")


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
    gpu = sub.add_parser("gpu", help="train.py end to end on synthetic VTAB-1k data: a task, the table, official SSF")
    gpu.add_argument("--backbone", default="vit_b16_in21k")
    gpu.add_argument("--method", default="ssf")
    gpu.add_argument("--task", default="cifar", help="the task of (a) and (c)")
    gpu.add_argument("--epochs", type=int, default=100)
    gpu.add_argument("--table-epochs", type=int, default=None, help="epochs of (b) (default: --epochs)")
    gpu.add_argument("--tasks", type=int, default=len(VTAB_TASKS), help="the first N tasks of the table in (b)")
    gpu.add_argument("--runs-per-gpu", type=int, nargs="+", default=[1, 2, 4], help="runs at once, each tried in (b)")
    gpu.add_argument("--batch-size", type=int, default=64)
    gpu.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    gpu.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"],
                     help="compile= modes timed in (a), the first the baseline; (b) uses the fastest (else the first)")
    gpu.add_argument("--ssf-repo", default=None, help="a checkout of dongzelian/SSF, for (c)")
    gpu.add_argument("--ssf-python", default=sys.executable, help="the interpreter command for SSF's code, which "
                     "needs timm 0.6.5: e.g. 'env PYTHONPATH=DIR python3'")
    gpu.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak (H200, measured: 790)")
    gpu.add_argument("--device", default="auto")
    gpu.add_argument("--out", default=None, help="also write the numbers as JSON to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    {"runner": bench_runner, "data": bench_data, "dyt": bench_dyt, "memory": bench_memory,
     "gpu": bench_gpu}[args.bench](args)


if __name__ == "__main__":
    main()
