"""Tiny datasets on disk in the layouts researchers have (NOAH VTAB-1k, VPT FGVC json, NOAH few-shot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

VTAB_SIZES = {"train800": 16, "val200": 8, "test": 12}


def _image(rng: np.random.Generator, label: int, num_classes: int, size: tuple[int, int]) -> Image.Image:
    """A noisy image whose mean colour encodes the class, so that a tiny model can learn it."""
    base = np.array([255 * label / max(1, num_classes - 1), 128, 255 - 255 * label / max(1, num_classes - 1)])
    pixels = np.clip(base + rng.normal(0, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_vtab_task(root: Path, task: str, num_classes: int, ext: str = "png", sizes=VTAB_SIZES, seed: int = 0) -> Path:
    """<root>/vtab-1k/<task>/ with train800, val200, train800val200 (own copies) and test lists."""
    rng = np.random.default_rng(seed)
    folder = root / "vtab-1k" / task
    written = {}
    for split, n in sizes.items():
        labels = [i % num_classes for i in range(n)]
        written[split] = [(_image(rng, y, num_classes, (20, 24)), y) for y in labels]
    written["train800val200"] = written["train800"] + written["val200"]
    for split, items in written.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (image, label) in enumerate(items):
            relative = f"images/{split}/{i:06d}.{ext}"
            image.save(folder / relative)
            lines.append(f"{relative} {label}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_fgvc_set(root: Path, folder: str, image_dir: str, num_classes: int, per_class=(3, 1, 2), seed=0) -> Path:
    """<root>/<folder>/{train,val,test}.json with 1-based class ids, images of varied aspect ratios."""
    rng = np.random.default_rng(seed)
    base = root / folder
    for split, n in zip(("train", "val", "test"), per_class, strict=True):
        annotations = {}
        for c in range(num_classes):
            for i in range(n):
                relative = f"{c + 1:03d}.class/{split}_{i}.jpg"
                path = base / image_dir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                _image(rng, c, num_classes, (int(rng.integers(30, 60)), int(rng.integers(30, 60)))).save(path)
                annotations[relative] = c + 1
        (base / f"{split}.json").write_text(json.dumps(annotations))
    return base


def make_fewshot_set(root: Path, folder: str, num_classes: int, shots: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "few-shot" / folder
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    lists = {f"train_meta.list.num_shot_{shots}.seed_{seed}": shots, "val_meta.list": 1, "test_meta.list": 2}
    for name, n in lists.items():
        lines = []
        for c in range(num_classes):
            for i in range(n):
                relative = f"class {c}/{name[:4]}_{i}.jpg"  # a space in the path: split at the last space
                (base / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
                _image(rng, c, num_classes, (24, 24)).save(base / "images" / relative)
                lines.append(f"{relative} {c}")
        (base / "annotations" / name).write_text("\n".join(lines) + "\n")
    return base
