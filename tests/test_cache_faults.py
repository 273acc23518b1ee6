"""The decode cache and the list reader when things go wrong: a killed build, a full or read-only disk, an image
or list that cannot be read. Each is one DataError line naming the path and the fix, with nothing left on disk."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data import DataError, DecodeCache, Geometry
from data.lists import read_list
from runners.config import PROJECT_ROOT

# Builds the cache of the PNGs in argv[1] under argv[2], one thread, 50 ms per image: slow enough to be killed midway.
SLOW_BUILD = """
import sys, time
from pathlib import Path
import data.cache
decode = data.cache._decode
data.cache._decode = lambda path, geometry: time.sleep(0.05) or decode(path, geometry)
entries = [(path, 0) for path in sorted(Path(sys.argv[1]).glob("*.png"))]
data.cache.DecodeCache(sys.argv[2], workers=1).load("x", "train", entries, data.cache.Geometry(32))
"""

# Builds the PNGs of argv[1] at 256 pixels under argv[2] on a disk that fills up after the check before the build:
# ENOSPC when the array is reserved (the 2 MB tmpfs in argv[2], or faked with argv[3] == "fake"); prints both.
FILL_UP = """
import errno, os, shutil, sys
from pathlib import Path
from types import SimpleNamespace
import data.cache
shutil.disk_usage = lambda path: SimpleNamespace(free=1 << 40)
reserve = os.posix_fallocate
def spy(fd, offset, length):
    print("reserved", length)
    if sys.argv[3] == "fake":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    reserve(fd, offset, length)
os.posix_fallocate = spy
entries = [(path, 0) for path in sorted(Path(sys.argv[1]).glob("*.png"))]
try:
    data.cache.DecodeCache(sys.argv[2]).load("vtab-x", "train", entries, data.cache.Geometry(256))
except data.cache.DataError as e:
    print(e)
"""


def _images(folder: Path, n: int, ext: str = "png") -> list[tuple[Path, int]]:
    """`n` noisy 24×20 images in `folder`, as (path, label 0) entries."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        path = folder / f"{i:04d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        entries.append((path, 0))
    return entries


def _oserror(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs (unmounted afterwards), or None where this user cannot mount one."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                                   capture_output=True).returncode:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_build_killed_with_sigkill_is_cleaned_up_by_the_next(tmp_path):
    entries = _images(tmp_path / "images", 100)
    cache_dir = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(tmp_path / "images"), str(cache_dir)],
                             cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not list(cache_dir.glob("*.partial-*/images.npy")):
            assert child.poll() is None and time.monotonic() < deadline, "the build ended before it was killed"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert list(cache_dir.glob("*.partial-*"))
    assert len(DecodeCache(cache_dir).load("x", "train", entries, Geometry(32))) == 100
    assert not list(cache_dir.glob("*.partial-*"))


def test_partial_folders_of_live_processes_and_other_hosts_stay(tmp_path):
    entries = _images(tmp_path / "images", 2)
    cache_dir = tmp_path / "cache"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stay = [f"x.partial-{host}-{os.getpid()}", f"x.partial-{host}-{sleeping.pid}",
                f"x.partial-elsewhere-{dead.pid}"]
        for name in [*stay, f"x.partial-{host}-{dead.pid}"]:
            (cache_dir / name).mkdir(parents=True)
        DecodeCache(cache_dir).load("x", "train", entries, Geometry(32))
        assert sorted(p.name for p in cache_dir.glob("*.partial-*")) == sorted(stay)
    finally:
        sleeping.kill()
        sleeping.wait()


def test_full_disk_is_seen_before_decoding(tmp_path, tmpfs, monkeypatch):
    entries = _images(tmp_path / "images", 12)  # 12×3×256×256 bytes: 2.4 MB for a 2 MB disk
    cache_dir = tmpfs or tmp_path / "cache"
    if tmpfs is None:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1 << 20))

    def no_reservation(fd, offset, length):
        raise AssertionError("the build started on a disk without room")

    monkeypatch.setattr(os, "posix_fallocate", no_reservation)
    with pytest.raises(DataError) as error:
        DecodeCache(cache_dir).load("vtab-x", "train", entries, Geometry(256))
    assert re.fullmatch(rf"not enough space in {re.escape(str(cache_dir))} for the decoded vtab-x train "
                        r"\(needs [\d.]+ MB, [\d.]+ MB free\); free space or set data.cache_dir=<a folder with room>",
                        str(error.value))
    assert not list(cache_dir.iterdir())


def test_disk_filling_up_fails_at_reservation_not_with_sigbus(tmp_path, tmpfs):
    entries = _images(tmp_path / "images", 12)
    cache_dir = tmpfs or tmp_path / "cache"
    out = subprocess.run([sys.executable, "-c", FILL_UP, str(tmp_path / "images"), str(cache_dir),
                          "real" if tmpfs else "fake"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]  # a memory map written past a full disk: -7 (SIGBUS)
    assert re.fullmatch(rf"reserved \d+\nnot enough space in {re.escape(str(cache_dir))} for the decoded vtab-x "
                        r"train \(.*\); free space or set data.cache_dir=<a folder with room>\n", out.stdout)
    assert not list(cache_dir.iterdir())
    assert len(DecodeCache(cache_dir).load("vtab-x", "train", entries[:2], Geometry(32))) == 2  # room again


def test_read_only_cache_folder(tmp_path, tmpfs, monkeypatch):
    entries = _images(tmp_path / "images", 2)
    if tmpfs is None:
        folder = tmp_path / "cache"

        def read_only(self, *args, **kwargs):
            raise _oserror(errno.EROFS, self)

        monkeypatch.setattr(Path, "mkdir", read_only)
    else:
        folder = tmpfs
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for cache_dir in (folder, folder / "decoded"):  # one that exists, one to make
        with pytest.raises(DataError) as error:
            DecodeCache(cache_dir).load("vtab-x", "train", entries, Geometry(32))
        assert str(error.value) == (f"cannot write the decode cache in {cache_dir} (Read-only file system); "
                                    f"set data.cache_dir=<a writable folder>")


def test_unreadable_image_is_not_called_corrupt(tmp_path, monkeypatch):
    entries = _images(tmp_path / "images", 4, ext="jpg")
    corrupt, locked = entries[1][0], entries[2][0]
    corrupt.write_bytes(corrupt.read_bytes()[:len(corrupt.read_bytes()) // 2])  # truncated
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError) as error:
        DecodeCache(cache_dir).load("x", "train", entries, Geometry(32))
    assert str(error.value) == (f"image {corrupt} is corrupt or truncated; replace it, or set data.skip_corrupt=true "
                                f"to leave such images out")
    open_image = Image.open

    def refuse(fp, *args, **kwargs):
        if Path(fp) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(fp))
        return open_image(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    skipping = DecodeCache(cache_dir, skip_corrupt=True)  # leaves out corrupt images, not unreadable ones
    with pytest.raises(DataError) as error:
        skipping.load("x", "train", entries, Geometry(32))
    assert str(error.value) == (f"cannot read image {locked} (Permission denied); fix its permissions (or the disk "
                                f"it is on) and run again")
    assert not list(cache_dir.iterdir())
    monkeypatch.undo()
    assert len(skipping.load("x", "train", entries, Geometry(32))) == 3


def test_unreadable_list_file_or_image_folder(tmp_path, monkeypatch):
    entries = _images(tmp_path / "images", 2)
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"images/{path.name} {label}\n" for path, label in entries))

    def refusing(method, refused: Path):
        def call(self, *args, **kwargs):
            if self == refused:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return method(self, *args, **kwargs)
        return call

    monkeypatch.setattr(Path, "read_text", refusing(Path.read_text, listing))
    with pytest.raises(DataError) as error:
        read_list(listing, tmp_path)
    assert str(error.value) == f"cannot read list file {listing} (Permission denied); fix its permissions (or the " \
                               f"disk it is on)"
    monkeypatch.undo()
    monkeypatch.setattr(Path, "stat", refusing(Path.stat, entries[1][0]))  # as when images/ cannot be searched
    with pytest.raises(DataError) as error:
        read_list(listing, tmp_path)
    assert str(error.value) == (f"cannot read image {entries[1][0]} on line 2 of {listing} (Permission denied); fix "
                                f"the permissions of it and of the folders that hold it")


def test_first_decode_logs_start_and_end_when_not_on_a_terminal(tmp_path, monkeypatch, caplog):
    entries = _images(tmp_path / "images", 5)
    cache = DecodeCache(tmp_path / "cache", workers=1)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a SLURM log, `2> log`
    caplog.set_level(logging.INFO, logger="data.cache")
    cache.load("vtab-x", "train", entries, Geometry(32))
    (folder,) = (tmp_path / "cache").iterdir()
    start, end = (r.getMessage() for r in caplog.records if r.name == "data.cache")
    assert start == f"decoding 5 images of vtab-x train into {folder}"
    assert re.fullmatch(r"decoded 5 images of vtab-x train in [\d.]+ s \(\d+ images/s\)", end)
    caplog.clear()
    cache.load("vtab-x", "train", entries, Geometry(32))
    assert not [r for r in caplog.records if r.name == "data.cache"]
    assert not sys.stderr.getvalue()


def test_first_decode_shows_a_progress_bar_on_a_terminal(tmp_path, monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "NO_COLOR", "FORCE_TERMINAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stderr", Terminal())
    caplog.set_level(logging.INFO, logger="data.cache")
    DecodeCache(tmp_path / "cache", workers=1).load("vtab-x", "train", _images(tmp_path / "images", 5), Geometry(32))
    assert "decoding vtab-x train" in sys.stderr.getvalue() and "5/5" in sys.stderr.getvalue()
    assert not [r for r in caplog.records if r.name == "data.cache"]
