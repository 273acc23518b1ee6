"""Build VTAB-1k in the NOAH folder layout from TensorFlow Datasets.

    python scripts/prepare_vtab.py --root ~/data --tasks all                  # JPEG, as NOAH's get_vtab1k.py
    python scripts/prepare_vtab.py --root ~/data --tasks cifar,dtd --format png
    python scripts/prepare_vtab.py --root ~/data --tasks resisc45 --manual-dir ~/downloads/vtab-manual

Writes `<root>/vtab-1k/<task>/images/<split>/NNNNNN.<ext>` and `<root>/vtab-1k/<task>/<split>.txt` for the splits
train800, val200, train800val200 and test, images at their source resolution. train800val200 (its own copies) is in
NOAH's order: TFDS reads the `train[:800]+train[800:1000]`-style union in blocks of 16 examples, alternating, so the
list is train 0–15, val 0–15, train 16–31, …, train 192–207, val 192–199, then train 208–799 (what order-dependent
steps such as SPT's first 512 images see). Every split's size is checked against VTAB-1k's (test sizes in
data/vtab_tfds.py); the record `prepared.json` holds the TFDS builder, versions and a fingerprint of train800val200
(labels and image bytes) to compare folders built elsewhere. Each task is built in `<root>/vtab-1k/.<task>.partial`
and renamed into place; a prepared task is skipped on a rerun, a partial one rebuilt, `--force` rebuilds. Needs the
data extra: `pip install -e ".[data]"`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from data import vtab_tfds
from data.task import DataError
from data.vtab import SPLITS, VTAB_TASKS, vtab_task
from data.vtab_tfds import SOURCE_SPLITS, TFDS_TASKS, builder_name, import_tfds, open_split
from runners.errors import UserError, guard

FORMATS = ("jpg", "png")
RECORD = "prepared.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2 through `guard`, not argparse's usage dump
        raise UserError(f"{message} (see --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root; the tasks go to <root>/vtab-1k/<task>/")
    parser.add_argument("--tasks", default="all", help="'all' or a comma list of task names or aliases")
    parser.add_argument("--format", choices=FORMATS, default="jpg",
                        help="jpg: PIL default quality, as NOAH's folders; png: lossless")
    parser.add_argument("--tfds-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets)")
    parser.add_argument("--manual-dir", default=None, help="folder with the manual downloads of resisc45 and "
                        "diabetic_retinopathy (default: <tfds-dir>/downloads/manual)")
    parser.add_argument("--force", action="store_true", help="rebuild tasks that are already prepared")
    return parser.parse_args(argv)


def select_tasks(spec: str) -> list[str]:
    """Task folder names for `all` or a comma list of names and aliases, in table order, without repeats."""
    if spec.strip() == "all":
        return [t.name for t in VTAB_TASKS]
    chosen = {vtab_task(name.strip()).name for name in spec.split(",") if name.strip()}
    if not chosen:
        raise UserError("--tasks is empty; pass 'all' or a comma list such as cifar,dtd")
    return [t.name for t in VTAB_TASKS if t.name in chosen]


def read_record(folder: Path) -> dict | None:
    """The completion record of a prepared task folder, or None."""
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def noah_order(train: list, val: list, block: int = 16) -> list:
    """train800 and val200 interleaved as TFDS reads their union and NOAH's lists hold it: alternating blocks of
    `block` examples until val is used up, then the rest of train."""
    out = []
    for start in range(0, max(len(train), len(val)), block):
        out += train[start:start + block] + val[start:start + block]
    return out


def _write_split(folder: Path, split: str, entries: list[tuple[str, int]]) -> None:
    (folder / f"{split}.txt").write_text("".join(f"{path} {label}\n" for path, label in entries))


def build_task(task: str, folder: Path, fmt: str, data_dir: str | None, manual_dir: str | None,
               progress: Progress) -> dict:
    """Write the four splits of `task` into `folder` (which must not exist); the completion record."""
    readers = {split: open_split(task, split, data_dir, manual_dir) for split in SOURCE_SPLITS}
    folder.mkdir(parents=True)
    sizes = [size for size, _ in readers.values()]
    bar = progress.add_task(task, total=None if None in sizes else sum(sizes) + 1000)
    entries: dict[str, list[tuple[str, int]]] = {}
    for split, (_, examples) in readers.items():
        (folder / "images" / split).mkdir(parents=True)
        entries[split] = []
        for index, (image, label) in enumerate(examples):
            path = f"images/{split}/{index:06d}.{fmt}"
            Image.fromarray(np.ascontiguousarray(image)).save(folder / path)
            entries[split].append((path, label))
            progress.advance(bar)
    for split, expected in (("train800", 800), ("val200", 200), ("test", vtab_tfds.TEST_SIZES[task])):
        if len(entries[split]) != expected:
            raise DataError(f"{task}: {split} ({TFDS_TASKS[task].splits[split]}) has {len(entries[split])} "
                            f"examples, VTAB-1k has {expected}; the TFDS data is incomplete or of another version "
                            f"(rebuild it with tfds, then rerun with --force)")
    (folder / "images" / "train800val200").mkdir()
    entries["train800val200"] = []
    fingerprint = hashlib.sha256()
    for source_path, label in noah_order(entries["train800"], entries["val200"]):
        path = f"images/train800val200/{len(entries['train800val200']):06d}.{fmt}"
        shutil.copyfile(folder / source_path, folder / path)
        entries["train800val200"].append((path, label))
        fingerprint.update(f"{label}\t".encode() + hashlib.sha256((folder / path).read_bytes()).digest())
        progress.advance(bar)
    for split in SPLITS:
        _write_split(folder, split, entries[split])
    record = {
        "task": task,
        "format": fmt,
        "counts": {split: len(entries[split]) for split in SPLITS},
        "tfds_builder": TFDS_TASKS[task].builder,
        "tfds_resolved": builder_name(task, data_dir),
        "tfds_splits": TFDS_TASKS[task].splits,
        "tfds_version": import_tfds().__version__,
        "train800val200_order": "NOAH (blocks of 16, train and val alternating)",
        "fingerprint": fingerprint.hexdigest()[:16],
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def prepare_task(task: str, vtab_dir: Path, fmt: str, data_dir: str | None, manual_dir: str | None, force: bool,
                 progress: Progress) -> dict | None:
    """Build `vtab_dir/task` unless it is already prepared (then None); the completion record."""
    final, partial = vtab_dir / task, vtab_dir / f".{task}.partial"
    if final.exists() and not force:
        record = read_record(final)
        if record is None:
            raise DataError(f"{final} exists but was not written by this script (no {RECORD}); move it away or "
                            f"pass --force to rebuild it")
        if record.get("format") != fmt:
            raise DataError(f"{final} was prepared as {record.get('format')}, not {fmt}; pass --force to rebuild "
                            f"it or use another --root")
        return None
    if partial.exists():
        shutil.rmtree(partial)
    record = build_task(task, partial, fmt, data_dir, manual_dir, progress)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tasks = select_tasks(args.tasks)
    import_tfds()
    vtab_dir = Path(args.root).expanduser() / "vtab-1k"
    console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as progress:
        for task in tasks:
            start = time.monotonic()
            record = prepare_task(task, vtab_dir, args.format, args.tfds_dir, args.manual_dir, args.force, progress)
            if record is None:
                console.print(f"{task}: already prepared in {vtab_dir / task}, skipped (--force rebuilds)")
                continue
            counts = ", ".join(f"{split} {n}" for split, n in record["counts"].items())
            console.print(f"{task}: {counts} → {vtab_dir / task} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    guard(main)
