"""Decode once: every image of a split decoded and resized a single time into a uint8 array on disk.

The array is a memory-mapped `.npy` (N×3×H×W; with `sizes.npy` of each image's height and width when the images
keep their aspect ratio, padded) beside the labels, in a folder named by a hash of the
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
INTERPOLATIONS = (*_PIL_FILTERS, "tf_bilinear")
MODES = ("direct", "shorter_crop", "square_crop", "shorter")


def tf_bilinear(image: Image.Image, width: int, height: int) -> Image.Image:
    """TensorFlow 1's bilinear resize (`tf.compat.v1.image.resize`, what VPT's TFDS pipeline ran): source
    coordinate = destination · in/out (no half-pixel centres), no antialiasing; rounded back to uint8."""
    src = np.asarray(image, dtype=np.float32)
    h, w = src.shape[:2]

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(out, dtype=np.float32) * (size / out)
        low = np.floor(pos).astype(np.int64)
        return low, np.minimum(low + 1, size - 1), (pos - low)[:, None]

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    top = src[y0][:, x0] * (1 - wx[None]) + src[y0][:, x1] * wx[None]
    bottom = src[y1][:, x0] * (1 - wx[None]) + src[y1][:, x1] * wx[None]
    out = top * (1 - wy[..., None]) + bottom * wy[..., None]
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class Geometry:
    """How an image becomes what the cache stores.

    - `direct`: resize to size×size (VTAB);
    - `shorter_crop`: the shorter side to size / crop_pct, then the centre size×size crop (FGVC evaluation);
    - `square_crop`: resize to (size / crop_pct)² then the centre crop (NOAH's few-shot evaluation);
    - `shorter`: the shorter side to `size`, the aspect ratio kept (the longer side at most 2·size), for training
      crops of the whole image; such a split is stored padded, with each image's height and width.
    `interpolation` is a PIL filter or `tf_bilinear`.
    """

    size: int
    interpolation: str = "bicubic"
    crop_pct: float | None = None
    mode: str = "direct"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation '{self.interpolation}'; choose one of: {', '.join(INTERPOLATIONS)}")
        if self.mode not in MODES:
            raise DataError(f"unknown resize mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if self.mode in ("shorter_crop", "square_crop") and not self.crop_pct:
            raise DataError(f"resize mode {self.mode} needs a crop_pct (e.g. 0.875)")

    def _resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        if self.interpolation == "tf_bilinear":
            return tf_bilinear(image, width, height)
        return image.resize((width, height), _PIL_FILTERS[self.interpolation])

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to in `shorter` mode."""
        scale = self.size / min(width, height)
        scale = min(scale, 2 * self.size / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def apply(self, image: Image.Image) -> Image.Image:
        if self.mode == "direct":
            return self._resize(image, self.size, self.size)
        if self.mode == "shorter":
            return self._resize(image, *self.target(*image.size))
        outer = round(self.size / self.crop_pct)
        if self.mode == "square_crop":
            image = self._resize(image, outer, outer)
        else:
            w, h = image.size
            scale = outer / min(w, h)
            image = self._resize(image, max(outer, round(w * scale)), max(outer, round(h * scale)))
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def describe(self) -> str:
        if self.mode == "direct":
            return f"resize to {self.size}x{self.size} ({self.interpolation})"
        if self.mode == "shorter":
            return f"resize shorter side to {self.size}, aspect kept ({self.interpolation})"
        outer = round(self.size / self.crop_pct)
        first = f"resize to {outer}x{outer}" if self.mode == "square_crop" else f"resize shorter side to {outer}"
        return f"{first} ({self.interpolation}), centre crop {self.size}"


def _target(path: Path, geometry: Geometry) -> tuple[int, int]:
    """(height, width) the image at `path` gets in `shorter` mode (from its header; (1, 1) if unreadable)."""
    try:
        with Image.open(path) as image:
            w, h = geometry.target(*image.size)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 1, 1
    return h, w


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
        sizes = torch.from_numpy(np.load(folder / "sizes.npy")) if (folder / "sizes.npy").exists() else None
        return Split(split, torch.from_numpy(images), torch.from_numpy(labels), sizes)

    def _build(self, folder: Path, entries: list[tuple[Path, int]], geometry: Geometry) -> None:
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            sizes = None
            height = width = geometry.size
            if geometry.mode == "shorter":  # variable sizes: read the headers, store padded to the largest
                sizes = np.array([_target(path, geometry) for path, _ in entries], dtype=np.int64)
                height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
            images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(entries), 3, height, width))
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
                    images[i, :, :array.shape[1], :array.shape[2]] = array
            images.flush()
            labels = np.array([label for _, label in entries], dtype=np.int64)
            if not keep.all():
                log.warning("left out %d corrupt image(s) of %d in %s", (~keep).sum(), len(entries), folder.name)
                np.save(partial / "kept.npy", np.asarray(images[keep]))
                del images
                os.replace(partial / "kept.npy", partial / "images.npy")
                labels = labels[keep]
                sizes = None if sizes is None else sizes[keep]
            np.save(partial / "labels.npy", labels)
            if sizes is not None:
                np.save(partial / "sizes.npy", sizes)
            (partial / "source.json").write_text(json.dumps(
                {"images": len(labels), "skipped": int((~keep).sum()), "geometry": geometry.describe(),
                 "first": str(entries[0][0])}, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
