"""FGVC: the five fine-grained sets in VPT's json split layout.

    <data_dir>/<folder>/{train,val,test}.json     {"<path relative to the image dir>": <class id>, ...}
    <data_dir>/<folder>/<image dir>/...

Class ids are remapped to 0..C−1 in sorted order, as VPT's loader does (1-based ids are fine).
Folders, image dirs, class counts and VPT's split sizes from `shared/reference/benchmarks.md` §B.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.task import DataError


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
