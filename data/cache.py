"""Decode once: every image of a split decoded and resized a single time into a uint8 array on disk.

The array is a memory-mapped `.npy` (N×3×H×W; with `sizes.npy` of each image's height and width when the images
keep their aspect ratio, padded) beside the labels, in a folder named by a hash of the
list (paths, labels, each file's size and mtime), the geometry and the interpolation — so an edited
list or a replaced image gives a new entry and a stale one is never read. A folder is built under a
temporary name (`.partial-<host>-<pid>`) and renamed into place, so a killed build leaves nothing that looks complete,
and the next build on that host removes what it left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

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
    """The image at `path` as uint8 3×H×W, or None when its data does not decode (corrupt, truncated, not an image).

    A file that cannot be read at all (permissions, a folder, an I/O error: an OSError with an errno) is no corrupt
    image to leave out, so that is a DataError whatever data.skip_corrupt says; PIL's own errors carry no errno.
    """
    try:
        with Image.open(path) as image:
            image.load()
            rgb = geometry.apply(image.convert("RGB"))
    except OSError as e:
        if e.errno is not None:
            raise DataError(f"cannot read image {path} ({e.strerror}); fix its permissions (or the disk it is on) "
                            f"and run again") from None
        return None
    except (SyntaxError, ValueError):
        return None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _reserve(path: Path) -> None:
    """Allocate every block of the file at `path` now: a disk that fills up then fails here with ENOSPC, not later
    with a SIGBUS (and no message) when the memory map is written. A file system without fallocate keeps it sparse."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _amount(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


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
            self._build(folder, f"{dataset} {split}", entries, geometry)
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: never written back
        labels = np.load(folder / "labels.npy")
        sizes = torch.from_numpy(np.load(folder / "sizes.npy")) if (folder / "sizes.npy").exists() else None
        return Split(split, torch.from_numpy(images), torch.from_numpy(labels), sizes)

    def _build(self, folder: Path, name: str, entries: list[tuple[Path, int]], geometry: Geometry) -> None:
        """Decode `entries` into `folder`, through `<folder>.partial-<host>-<pid>` (removed whatever happens), after
        clearing the partial folders of builds killed on this host. A full disk (seen beforehand, or ENOSPC when the
        array is reserved or written) and an unwritable cache folder are one-line DataErrors."""
        sizes = None
        height = width = geometry.size
        if geometry.mode == "shorter":  # variable sizes: read the headers, store padded to the largest
            sizes = np.array([_target(path, geometry) for path, _ in entries], dtype=np.int64)
            height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        need = len(entries) * (3 * height * width + 24) + (1 << 20)  # the images, int64 labels and sizes, the rest
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            if shutil.disk_usage(self.directory).free < need:
                raise self._no_space(name, need)
            partial = folder.with_name(f"{folder.name}.partial-{socket.gethostname()}-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            try:
                images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                                   shape=(len(entries), 3, height, width))
                _reserve(partial / "images.npy")
                keep = self._decode_all(images, entries, geometry, name, folder)
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
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space(name, need) from None
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise DataError(f"cannot write the decode cache in {self.directory} ({e.strerror}); set "
                                f"data.cache_dir=<a writable folder>") from None
            raise

    def _no_space(self, name: str, need: int) -> DataError:
        free = shutil.disk_usage(self.directory).free
        return DataError(f"not enough space in {self.directory} for the decoded {name} (needs {_amount(need)}, "
                         f"{_amount(free)} free); free space or set data.cache_dir=<a folder with room>")

    def _remove_stale(self) -> None:
        """Remove the partial folders of builds killed on this host (kill -9 skips every cleanup); those of live
        processes, and of other hosts (whose processes this one cannot see), stay."""
        host = socket.gethostname()
        for partial in self.directory.glob("*.partial-*"):
            owner, _, pid = partial.name.rpartition(".partial-")[2].rpartition("-")
            if owner == host and pid.isdigit() and not process_alive(int(pid)):
                log.info("removing %s, left by a killed build", partial)
                shutil.rmtree(partial, ignore_errors=True)

    def _decode_all(self, images: np.ndarray, entries: list[tuple[Path, int]], geometry: Geometry, name: str,
                    folder: Path) -> np.ndarray:
        """Decode `entries` into `images` (padded top-left); the mask of the images kept. This can take minutes: a
        progress bar when stderr is a terminal, else a log line at the start and one at the end (SLURM logs)."""
        keep = np.ones(len(entries), dtype=bool)
        quiet = not sys.stderr.isatty()
        if quiet:
            log.info("decoding %d images of %s into %s", len(entries), name, folder)
        start = time.monotonic()
        with ThreadPoolExecutor(self.workers) as pool, Progress(
                *Progress.get_default_columns(), MofNCompleteColumn(), console=Console(stderr=True), transient=True,
                disable=quiet) as progress:
            bar = progress.add_task(f"decoding {name}", total=len(entries))
            decoded = pool.map(lambda e: _decode(e[0], geometry), entries)
            for i, ((path, _), array) in enumerate(zip(entries, decoded, strict=True)):
                progress.advance(bar)
                if array is None:
                    if not self.skip_corrupt:
                        raise DataError(f"image {path} is corrupt or truncated; replace it, or set "
                                        f"data.skip_corrupt=true to leave such images out")
                    keep[i] = False
                    continue
                images[i, :, :array.shape[1], :array.shape[2]] = array
        if quiet:
            seconds = time.monotonic() - start
            log.info("decoded %d images of %s in %.1f s (%.0f images/s)", len(entries), name, seconds,
                     len(entries) / max(seconds, 1e-6))
        return keep
