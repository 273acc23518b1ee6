"""VTAB-1k: the 19 tasks (NOAH folder names, groups, class counts) and the NOAH list-file layout.

    <data_dir>/vtab-1k/<task>/{train800,val200,train800val200,test}.txt   one `relative/path label` per line
    <data_dir>/vtab-1k/<task>/images/<split>/NNNNNN.{jpg,png}

Task order is the column order of published tables; groups and class counts as in
`shared/reference/benchmarks.md` §A.1 (ΣC = 940).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.cache import DecodeCache, Geometry
from data.lists import read_list
from data.task import VTAB_PROTOCOL_SPLITS, DataError, Split


@dataclass(frozen=True)
class VtabTask:
    name: str  # the NOAH folder name
    group: str  # Natural | Specialized | Structured
    num_classes: int


VTAB_TASKS: tuple[VtabTask, ...] = (
    VtabTask("cifar", "Natural", 100),
    VtabTask("caltech101", "Natural", 102),
    VtabTask("dtd", "Natural", 47),
    VtabTask("oxford_flowers102", "Natural", 102),
    VtabTask("oxford_iiit_pet", "Natural", 37),
    VtabTask("svhn", "Natural", 10),
    VtabTask("sun397", "Natural", 397),
    VtabTask("patch_camelyon", "Specialized", 2),
    VtabTask("eurosat", "Specialized", 10),
    VtabTask("resisc45", "Specialized", 45),
    VtabTask("diabetic_retinopathy", "Specialized", 5),
    VtabTask("clevr_count", "Structured", 8),
    VtabTask("clevr_dist", "Structured", 6),
    VtabTask("dmlab", "Structured", 6),
    VtabTask("kitti", "Structured", 4),
    VtabTask("dsprites_loc", "Structured", 16),
    VtabTask("dsprites_ori", "Structured", 16),
    VtabTask("smallnorb_azi", "Structured", 18),
    VtabTask("smallnorb_ele", "Structured", 9),
)
GROUPS = ("Natural", "Specialized", "Structured")
SPLITS = ("train800", "val200", "train800val200", "test")

# Keys other codebases use for the same folders (SSF: cifar100, flowers102, pets; NOAH scripts: oxford_pet).
ALIASES = {"cifar100": "cifar", "oxford_pet": "oxford_iiit_pet", "pets": "oxford_iiit_pet",
           "flowers102": "oxford_flowers102"}
_BY_NAME = {t.name: t for t in VTAB_TASKS}


def vtab_task(name: str) -> VtabTask:
    """The task called `name` (a NOAH folder name or a common alias)."""
    task = _BY_NAME.get(ALIASES.get(name, name))
    if task is None:
        raise DataError(f"unknown VTAB-1k task '{name}'; choose one of: {', '.join(_BY_NAME)}")
    return task


class NoahSource:
    """A VTAB-1k task in the NOAH layout under `<root>/vtab-1k/<task>/`."""

    def __init__(self, root: str | Path, task: str):
        self.task = vtab_task(task)
        self.root = Path(root).expanduser()
        self.folder = self.root / "vtab-1k" / self.task.name
        if not self.folder.is_dir():
            raise DataError(f"VTAB-1k task folder {self.folder} does not exist; build it with `python "
                            f"scripts/prepare_vtab.py --root {self.root} --tasks {self.task.name}` or set "
                            f"paths.data_dir= to the folder that holds vtab-1k/")
        self.data_format = "NOAH vtab-1k list files"
        record = self.folder / "prepared.json"
        prepared = json.loads(record.read_text()) if record.is_file() else None
        self.provenance = {"prepared": {k: prepared.get(k) for k in ("format", "tfds_builder", "tfds_resolved",
                                                                    "tfds_version", "fingerprint")}
                           if prepared else "not recorded (no prepared.json: a folder from another tool)"}

    def splits(self, protocol: str) -> tuple[str, str]:
        return VTAB_PROTOCOL_SPLITS[protocol]

    def load(self, split: str, geometry: Geometry, cache: DecodeCache) -> Split:
        entries = read_list(self.folder / f"{split}.txt", self.folder)
        suffix = entries[0][0].suffix.lstrip(".").lower()
        self.data_format = f"NOAH vtab-1k list files ({suffix})"
        return cache.load(f"vtab-{self.task.name}", split, entries, geometry)
