"""Decode once: every image of a split decoded and resized a single time into a uint8 array on disk.

The array is a memory-mapped `.npy` (N×3×H×W) beside the labels, in a folder named by a hash of the
list (paths, labels, each file's size and mtime), the geometry and the interpolation — so an edited
list or a replaced image gives a new entry and a stale one is never read. A folder is built under a
temporary name and renamed into place, so a killed build leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data.task import DataError, Split

log = logging.getLogger(__name__)

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Geometry:
    """How an image becomes size×size: `direct` resize (VTAB), or resize the shorter side to
    `size / crop_pct` and take the centre size×size crop (FGVC evaluation, and training crops' source)."""

    size: int
    interpolation: str = "bicubic"
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise DataError(f"unknown interpolation '{self.interpolation}'; choose one of: {', '.join(_PIL_FILTERS)}")

    def apply(self, image: Image.Image) -> Image.Image:
        resample = _PIL_FILTERS[self.interpolation]
        if self.crop_pct is None:
            return image.resize((self.size, self.size), resample)
        shorter = round(self.size / self.crop_pct)
        w, h = image.size
        scale = shorter / min(w, h)
        image = image.resize((max(shorter, round(w * scale)), max(shorter, round(h * scale))), resample)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def describe(self) -> str:
        if self.crop_pct is None:
            return f"resize to {self.size}x{self.size} ({self.interpolation})"
        shorter = round(self.size / self.crop_pct)
        return f"resize shorter side to {shorter} ({self.interpolation}), centre crop {self.size}"


def _decode(path: Path, geometry: Geometry) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            image.load()
            rgb = geometry.apply(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


class DecodeCache:
    """Decoded splits under `directory`, built with `workers` threads (0: one per CPU).

    Args:
        skip_corrupt: leave out images that cannot be decoded (logged with their count) instead of stopping.
    """

    def __init__(self, directory: str | Path, workers: int = 0, skip_corrupt: bool = False):
        self.directory = Path(directory)
        self.workers = workers or os.cpu_count() or 1
        self.skip_corrupt = skip_corrupt

    def key(self, name: str, entries: list[tuple[Path, int]], geometry: Geometry) -> str:
        """`name` and the size, then a hash of the geometry and every (path, label, file size, mtime)."""
        digest = hashlib.sha256(repr((geometry, self.skip_corrupt)).encode())
        for path, label in entries:
            stat = path.stat()
            digest.update(f"{path}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return f"{name}-{geometry.size}-{digest.hexdigest()[:16]}"

    def load(self, dataset: str, split: str, entries: list[tuple[Path, int]], geometry: Geometry) -> Split:
        """`split` of `dataset` decoded with `geometry`, from the cache or decoded now (once)."""
        folder = self.directory / self.key(f"{dataset}-{split}", entries, geometry)
        if not (folder / "images.npy").exists():
            self._build(folder, entries, geometry)
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: never written back
        labels = np.load(folder / "labels.npy")
        return Split(split, torch.from_numpy(images), torch.from_numpy(labels))

    def _build(self, folder: Path, entries: list[tuple[Path, int]], geometry: Geometry) -> None:
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(entries), 3, geometry.size, geometry.size))
            keep = np.ones(len(entries), dtype=bool)
            with ThreadPoolExecutor(self.workers) as pool:
                decoded = pool.map(lambda e: _decode(e[0], geometry), entries, chunksize=16)
                for i, ((path, _), array) in enumerate(zip(entries, decoded, strict=True)):
                    if array is None:
                        if not self.skip_corrupt:
                            raise DataError(f"image {path} is corrupt or truncated; replace it, or set "
                                            f"data.skip_corrupt=true to leave such images out")
                        keep[i] = False
                        continue
                    images[i] = array
            images.flush()
            labels = np.array([label for _, label in entries], dtype=np.int64)
            if not keep.all():
                log.warning("left out %d corrupt image(s) of %d in %s", (~keep).sum(), len(entries), folder.name)
                np.save(partial / "kept.npy", np.asarray(images[keep]))
                del images
                os.replace(partial / "kept.npy", partial / "images.npy")
                labels = labels[keep]
            np.save(partial / "labels.npy", labels)
            (partial / "source.json").write_text(json.dumps(
                {"images": len(labels), "skipped": int((~keep).sum()), "geometry": geometry.describe(),
                 "first": str(entries[0][0])}, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
