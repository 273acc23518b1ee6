"""Few-shot FGVC (NOAH's protocol, the CoOp datasets): k-shot training lists, evaluation on test_meta.

    <data_dir>/few-shot/<folder>/annotations/train_meta.list.num_shot_<k>.seed_<s>, val_meta.list, test_meta.list
    <data_dir>/few-shot/<folder>/images/<path>       (Stanford Cars: <data_dir>/few-shot/<folder>/<path>)

Shots {1, 2, 4, 8, 16}, seeds {0, 1, 2}; `shared/reference/benchmarks.md` §C.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.cache import DecodeCache, Geometry
from data.lists import read_list
from data.task import DataError, Split

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class FewShotSet:
    name: str
    folder: str  # NOAH's folder name (sic: standford-cars)
    num_classes: int
    image_dir: str  # where list paths are rooted, under the folder


FEWSHOT_SETS = {s.name: s for s in (
    FewShotSet("fgvc_aircraft", "fgvc-aircraft", 100, "images"),
    FewShotSet("food101", "food101", 101, "images"),
    FewShotSet("oxford_flowers102", "oxford-flowers102", 102, "images"),
    FewShotSet("oxford_pets", "oxford-pets", 37, "images"),
    FewShotSet("stanford_cars", "standford-cars", 196, ""),
)}


def fewshot_set(name: str) -> FewShotSet:
    if name not in FEWSHOT_SETS:
        raise DataError(f"unknown few-shot set '{name}'; choose one of: {', '.join(FEWSHOT_SETS)}")
    return FEWSHOT_SETS[name]


class FewShotSource:
    """`final` trains on the k-shot list and tests on test_meta; `tune` evaluates on val_meta instead."""

    data_format = "NOAH few-shot lists"

    def __init__(self, root: str | Path, name: str, shots: int, fewshot_seed: int):
        if shots not in SHOTS:
            raise DataError(f"dataset.shots={shots} has no list; choose one of: {', '.join(map(str, SHOTS))}")
        if fewshot_seed not in SEEDS:
            raise DataError(f"dataset.fewshot_seed={fewshot_seed} has no list; choose one of: 0, 1, 2")
        self.set = fewshot_set(name)
        self.shots, self.fewshot_seed = shots, fewshot_seed
        self.folder = Path(root).expanduser() / "few-shot" / self.set.folder
        if not self.folder.is_dir():
            raise DataError(f"few-shot folder {self.folder} does not exist; put NOAH's few-shot lists in "
                            f"{self.folder}/annotations and the images in {self.folder / self.set.image_dir}, "
                            f"or set paths.data_dir=")

    def splits(self, protocol: str) -> tuple[str, str]:
        train = f"train_meta.list.num_shot_{self.shots}.seed_{self.fewshot_seed}"
        return train, {"final": "test_meta.list", "tune": "val_meta.list"}[protocol]

    def load(self, split: str, geometry: Geometry, cache: DecodeCache) -> Split:
        entries = read_list(self.folder / "annotations" / split, self.folder / self.set.image_dir)
        return cache.load(f"fewshot-{self.set.name}", split, entries, geometry)
