"""FGVC: the five fine-grained sets in VPT's json split layout.

    <data_dir>/<folder>/{train,val,test}.json     {"<path relative to the image dir>": <class id>, ...}
    <data_dir>/<folder>/<image dir>/...

Class ids are remapped to 0..C−1 in sorted order, as VPT's loader does (1-based ids are fine).
Folders, image dirs, class counts and VPT's split sizes from `shared/reference/benchmarks.md` §B.1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.cache import DecodeCache, Geometry
from data.task import DataError, Split


@dataclass(frozen=True)
class FgvcSet:
    name: str  # the vpeft key (column of the published tables)
    folder: str  # the dataset folder under data_dir
    image_dir: str  # where the json paths are rooted, relative to the folder ("" = the folder itself)
    num_classes: int
    sizes: tuple[int, int, int]  # VPT's train / val / test


FGVC_SETS: tuple[FgvcSet, ...] = (
    FgvcSet("cub", "CUB_200_2011", "images", 200, (5_394, 600, 5_794)),
    FgvcSet("nabirds", "nabirds", "images", 555, (21_536, 2_393, 24_633)),
    FgvcSet("oxford_flowers", "OxfordFlower", "", 102, (1_020, 1_020, 6_149)),
    FgvcSet("stanford_dogs", "Stanford-dogs", "Images", 120, (10_800, 1_200, 8_580)),
    FgvcSet("stanford_cars", "Stanford-cars", "", 196, (7_329, 815, 8_041)),
)
SPLITS = ("train", "val", "test")
_BY_NAME = {s.name: s for s in FGVC_SETS}


def fgvc_set(name: str) -> FgvcSet:
    found = _BY_NAME.get(name)
    if found is None:
        raise DataError(f"unknown FGVC set '{name}'; choose one of: {', '.join(_BY_NAME)}")
    return found


def _read_json(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path} must be a non-empty JSON object mapping image paths to class ids")
    return data


class FgvcSource:
    """An FGVC set in VPT's json layout. `final` trains on `final_train` (train+val, or VPT's code's train) and
    tests on test; `tune` trains on train and evaluates on val."""

    def __init__(self, root: str | Path, name: str, final_train: str = "train+val"):
        if final_train not in ("train", "train+val"):
            raise DataError(f"pipeline.fgvc_final_train={final_train} must be train or train+val")
        self.final_train = final_train
        self.set = fgvc_set(name)
        self.root = Path(root).expanduser()
        self.folder = self.root / self.set.folder
        if not self.folder.is_dir():
            raise DataError(f"FGVC folder {self.folder} does not exist; build it with `python scripts/prepare_fgvc.py "
                            f"--root {self.root} --dataset {self.set.name} --archive ...` or set paths.data_dir=")
        record = self.folder / ".prepared.json"
        if record.is_file():  # written by prepare_fgvc.py: val is drawn by vpeft, not VPT's released membership
            prepared = json.loads(record.read_text())
            drawn = prepared.get("seed")
            origin = ("vpeft's prepare_fgvc.py, the official val split" if drawn is None else
                      f"vpeft's prepare_fgvc.py, val drawn with seed {drawn} (VPT's sizes, not its membership)")
        else:
            origin = "not recorded (no .prepared.json: VPT's released files or another tool's)"
        self.data_format = "VPT-format FGVC json splits"
        self.provenance = {"fgvc_splits": origin}
        self._annotations = {split: _read_json(self.folder / f"{split}.json") for split in SPLITS}
        ids = sorted({int(v) for a in self._annotations.values() for v in a.values()})
        self._class_index = {class_id: i for i, class_id in enumerate(ids)}

    def splits(self, protocol: str) -> tuple[str, str]:
        return {"final": (self.final_train, "test"), "tune": ("train", "val")}[protocol]

    def load(self, split: str, geometry: Geometry, cache: DecodeCache) -> Split:
        image_root = self.folder / self.set.image_dir
        entries = []
        for part in split.split("+"):
            for relative, class_id in self._annotations[part].items():
                path = image_root / relative
                if not path.is_file():
                    raise DataError(f"{self.folder / f'{part}.json'}: image {path} does not exist")
                entries.append((path, self._class_index[int(class_id)]))
        return cache.load(f"fgvc-{self.set.name}", split, entries, geometry)
