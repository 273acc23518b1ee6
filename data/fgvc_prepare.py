"""Build VPT's FGVC json splits (read by `data/fgvc.py`) from the five datasets' original downloads.

    <root>/<folder>/{train,val,test}.json          {"<path relative to the image dir>": <class id>, ...}
    <root>/<folder>/<image dir>/<path as in the original download>

`test` is the official test split. Oxford Flowers keeps its official train / val (setid.mat). For the
other four, `val` is a tenth of the official training split, rounded up, drawn with a seed, and `train`
is the rest: on the real datasets this gives VPT's sizes exactly (CUB 600 of 5,994, NABirds 2,393 of
23,929, Dogs 1,200 of 12,000, Cars 815 of 8,144). Class ids are the datasets' own (1-based, NABirds'
non-contiguous); the reader remaps them to 0..C−1.

Archives are unpacked into `<folder>/.extract` and their images moved into place; images found under a
`--source` folder are hard-linked (or copied) instead. The json files are written atomically and a
completion record last, so an interrupted run is simply run again.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from data.fgvc import SPLITS, fgvc_set
from data.task import DataError

VAL_DIVISOR = 10  # val = ceil(official train / 10)
RECORD = ".prepared.json"
STAGING = ".extract"
SEARCH_DEPTH = 2  # annotation files and image folders are looked for this many folders below an input root
DOWNLOADS: dict[str, str] = {
    "cub": "CUB_200_2011.tgz",
    "nabirds": "nabirds.tar.gz",
    "oxford_flowers": "102flowers.tgz, imagelabels.mat and setid.mat",
    "stanford_dogs": "images.tar and lists.tar",
    "stanford_cars": "cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat",
}


@dataclass(frozen=True)
class Official:
    """A dataset's official splits ({json key: class id} per split) and where each key's image is now."""

    splits: dict[str, dict[str, int]]
    files: dict[str, Path]


@dataclass(frozen=True)
class Prepared:
    """What `prepare` left in `folder`; `skipped` when a completed earlier run was found."""

    folder: Path
    sizes: dict[str, int]
    num_classes: int
    skipped: bool


@dataclass(frozen=True)
class Inputs:
    """The folders to search (unpacked archives, `--source`) and how error messages name them."""

    roots: tuple[Path, ...]
    described: str

    def file(self, name: str, expected: str) -> Path:
        """The shallowest file called `name`."""
        found = self._find(name, Path.is_file)
        if found is None:
            raise DataError(f"no {name} in {self.described}; expected {expected}")
        return found

    def folder(self, name: str, probe: str, expected: str) -> Path:
        """The shallowest folder called `name` that holds the relative path `probe`."""
        found = self._find(name, lambda path: (path / probe).is_file())
        if found is None:
            raise DataError(f"no folder {name}/ holding {probe} in {self.described}; expected {expected}")
        return found

    def _find(self, name: str, accept: Callable[[Path], bool]) -> Path | None:
        hits = []
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                depth = len(Path(dirpath).relative_to(root).parts)
                if name in dirnames or name in filenames:
                    path = Path(dirpath) / name
                    if accept(path):
                        hits.append((depth, str(path)))
                keep = depth < SEARCH_DEPTH
                dirnames[:] = [d for d in dirnames if keep and not d.startswith((".", "__MACOSX"))]
        return Path(min(hits)[1]) if hits else None


def val_count(official_train: int) -> int:
    """VPT's val size for an official training split of `official_train` images: a tenth, rounded up."""
    return -(-official_train // VAL_DIVISOR)


def draw_val(official_train: dict[str, int], seed: int) -> tuple[dict[str, int], dict[str, int]]:
    """(train, val): `val_count` images taken in a seeded random order, passing over any whose class
    would be left without a training image."""
    keys = sorted(official_train)
    left = Counter(official_train.values())
    want = val_count(len(keys))
    val: dict[str, int] = {}
    for index in np.random.default_rng(seed).permutation(len(keys)):
        if len(val) == want:
            break
        key = keys[index]
        label = official_train[key]
        if left[label] > 1:
            left[label] -= 1
            val[key] = label
    if len(val) < want:
        raise DataError(f"the official training split has {len(keys)} images in {len(left)} classes: too few to "
                        f"hold out {want} for val and keep every class in train")
    train = {key: label for key, label in official_train.items() if key not in val}
    return train, val


def _integer(value: str, where: str) -> int:
    if not value.lstrip("-").isdigit():
        raise DataError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _read_table(path: Path) -> dict[str, str]:
    """`<image id> <value>` per line, as in CUB's and NABirds' annotation txt files."""
    if not path.is_file():
        raise DataError(f"missing {path}: expected next to images.txt")
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected '<image id> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
    return table


def _read_birds(inputs: Inputs, nabirds: bool) -> Official:
    """CUB-200-2011 and NABirds share a layout: images.txt, image_class_labels.txt, train_test_split.txt
    (1 = train) and images/; CUB's image ids are integers, NABirds' are UUIDs."""
    top = "nabirds" if nabirds else "CUB_200_2011"
    download = DOWNLOADS["nabirds" if nabirds else "cub"]
    listing = inputs.file("images.txt", f"{top}/images.txt from {download}")
    base = listing.parent
    paths = _read_table(listing)
    labels = _read_table(base / "image_class_labels.txt")
    is_train = _read_table(base / "train_test_split.txt")
    if all(image_id.isdigit() for image_id in paths) == nabirds:
        found = "integer image ids (CUB-200-2011's)" if nabirds else "non-integer image ids (NABirds'?)"
        raise DataError(f"the images.txt in {inputs.described} has {found}; expected {top}/images.txt "
                        f"from {download}")
    splits: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for image_id, relative in paths.items():
        if image_id not in labels or image_id not in is_train:
            raise DataError(f"image id {image_id} of {listing} has no line in image_class_labels.txt "
                            f"or train_test_split.txt")
        flag = _integer(is_train[image_id], f"{base / 'train_test_split.txt'}, image {image_id}")
        splits["train" if flag == 1 else "test"][relative] = _integer(
            labels[image_id], f"{base / 'image_class_labels.txt'}, image {image_id}")
    return Official(splits, {relative: base / "images" / relative for relative in paths.values()})


def read_cub(inputs: Inputs) -> Official:
    """CUB-200-2011: CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, images/}."""
    return _read_birds(inputs, nabirds=False)


def read_nabirds(inputs: Inputs) -> Official:
    """NABirds: nabirds/{images.txt, image_class_labels.txt, train_test_split.txt, images/}."""
    return _read_birds(inputs, nabirds=True)


def _load_mat(path: Path, fields: Sequence[str], expected: str) -> dict:
    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises several unrelated types for a file that is not a .mat
        raise DataError(f"cannot read {path} as a MATLAB file ({e}); expected {expected}") from None
    missing = [field for field in fields if field not in mat]
    if missing:
        raise DataError(f"{path} has no '{missing[0]}'; expected {expected}")
    return mat


def _ints(value: object, where: str) -> list[int]:
    try:
        return [int(v) for v in np.atleast_1d(value).ravel()]
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected integers") from None


def read_flowers(inputs: Inputs) -> Official:
    """Oxford Flowers 102: jpg/image_%05d.jpg (102flowers.tgz), imagelabels.mat `labels` (1-based classes,
    indexed by image id − 1) and setid.mat `trnid` / `valid` / `tstid` (1-based image ids)."""
    expected = "imagelabels.mat and setid.mat from the Oxford Flowers 102 page"
    labels = _ints(_load_mat(inputs.file("imagelabels.mat", expected), ("labels",), expected)["labels"],
                   "imagelabels.mat labels")
    setid_path = inputs.file("setid.mat", expected)
    setid = _load_mat(setid_path, ("trnid", "valid", "tstid"), expected)
    names: dict[str, dict[str, int]] = {}
    for split, field in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = _ints(setid[field], f"{setid_path} {field}")
        bad = [i for i in ids if not 1 <= i <= len(labels)]
        if bad:
            raise DataError(f"{setid_path} {field} has image id {bad[0]}, but imagelabels.mat labels "
                            f"{len(labels)} images")
        names[split] = {f"image_{i:05d}.jpg": labels[i - 1] for i in ids}
    jpg = inputs.folder("jpg", next(iter(names["train"])), "jpg/image_00001.jpg ... from 102flowers.tgz")
    splits = {split: {f"jpg/{name}": label for name, label in part.items()} for split, part in names.items()}
    return Official(splits, {f"jpg/{name}": jpg / name for part in names.values() for name in part})


def read_dogs(inputs: Inputs) -> Official:
    """Stanford Dogs: Images/<synset-breed>/<file>.jpg (images.tar) and train_list.mat / test_list.mat
    (lists.tar) with `file_list` relative to Images/ and 1-based `labels`."""
    expected = "train_list.mat and test_list.mat from lists.tar"
    splits: dict[str, dict[str, int]] = {}
    for split in ("train", "test"):
        path = inputs.file(f"{split}_list.mat", expected)
        mat = _load_mat(path, ("file_list", "labels"), expected)
        files = [str(f) for f in np.atleast_1d(mat["file_list"]).ravel()]
        labels = _ints(mat["labels"], f"{path} labels")
        if len(files) != len(labels):
            raise DataError(f"{path}: {len(files)} files but {len(labels)} labels")
        splits[split] = dict(zip(files, labels, strict=True))
    images = inputs.folder("Images", next(iter(splits["train"])), "Images/<breed>/<file>.jpg from images.tar")
    return Official(splits, {key: images / key for part in splits.values() for key in part})


def read_cars(inputs: Inputs) -> Official:
    """Stanford Cars: cars_train/ and cars_test/ (cars_train.tgz, cars_test.tgz), the `annotations` struct
    array (`fname`, 1-based `class`) of devkit/cars_train_annos.mat (car_devkit.tgz) and of
    cars_test_annos_withlabels.mat; json keys are `cars_train/<fname>` and `cars_test/<fname>`."""
    splits: dict[str, dict[str, int]] = {}
    files: dict[str, Path] = {}
    for split, mat_name, folder in (("train", "cars_train_annos.mat", "cars_train"),
                                    ("test", "cars_test_annos_withlabels.mat", "cars_test")):
        expected = f"{mat_name} from car_devkit.tgz" if split == "train" else \
            f"{mat_name}, given with --archive (the devkit's cars_test_annos.mat has no labels)"
        path = inputs.file(mat_name, expected)
        records = np.atleast_1d(_load_mat(path, ("annotations",), expected)["annotations"])
        if records.dtype.names is None or not {"fname", "class"} <= set(records.dtype.names):
            raise DataError(f"{path}: `annotations` has no 'fname' and 'class' fields; expected {expected}")
        names = [str(name) for name in records["fname"]]
        labels = _ints(records["class"], f"{path} class")
        images = inputs.folder(folder, names[0], f"{folder}/{names[0]} from {folder}.tgz")
        splits[split] = {f"{folder}/{name}": label for name, label in zip(names, labels, strict=True)}
        files.update({f"{folder}/{name}": images / name for name in names})
    return Official(splits, files)


READERS: dict[str, Callable[[Inputs], Official]] = {
    "cub": read_cub,
    "nabirds": read_nabirds,
    "oxford_flowers": read_flowers,
    "stanford_dogs": read_dogs,
    "stanford_cars": read_cars,
}


def _unpack(path: Path, into: Path, expected: str) -> None:
    """Extract a tar (any compression) or zip archive into `into`; a .mat file is copied there as is."""
    try:
        if path.suffix.lower() == ".mat":
            shutil.copyfile(path, into / path.name)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(into)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(into, filter="data")
    except OSError as e:
        raise DataError(f"cannot unpack {path}: {e}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error):
        raise DataError(f"cannot unpack {path}: it is not a complete tar or zip archive; expected {expected}") from None


def _place(files: dict[str, Path], image_root: Path, staging: Path) -> None:
    """Put every image at image_root/<key>: moved out of `staging`, otherwise hard-linked or copied."""
    missing = [key for key, path in files.items() if not path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(files)} images in the annotations are missing from the "
                        f"download, e.g. {missing[0]}")
    made: set[Path] = set()
    for key, source in files.items():
        target = image_root / key
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if target.exists() and target.samefile(source):
            continue
        if source.is_relative_to(staging):
            os.replace(source, target)
            continue
        partial = target.with_name(target.name + ".part")
        partial.unlink(missing_ok=True)
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
        os.replace(partial, target)


def _write_json(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(content, sort_keys=True))
    os.replace(partial, path)


def prepare(root: Path, name: str, archives: Sequence[Path] = (), source: Path | None = None, seed: int = 0,
            force: bool = False) -> Prepared:
    """Write <root>/<folder>/{train,val,test}.json and the images of FGVC set `name` from its original
    `archives` (and .mat files) and/or an extracted `source` folder; a completed earlier run is kept
    unless `force`."""
    fgvc = fgvc_set(name)
    folder = Path(root).expanduser() / fgvc.folder
    record_path = folder / RECORD
    if record_path.is_file() and not force:
        record = json.loads(record_path.read_text())
        if record["seed"] not in (None, seed):
            raise DataError(f"{folder} was prepared with --seed {record['seed']}; add --force to redraw val "
                            f"with --seed {seed}")
        return Prepared(folder, record["sizes"], record["num_classes"], skipped=True)
    if not archives and source is None:
        raise DataError(f"give the {name} download ({DOWNLOADS[name]}) with --archive FILE, once per file, "
                        f"or its extracted folder with --source DIR")
    for archive in archives:
        if not Path(archive).is_file():
            raise DataError(f"archive {archive} does not exist; {name} expects {DOWNLOADS[name]}")
    if source is not None and not Path(source).is_dir():
        raise DataError(f"source folder {source} does not exist; expected the extracted {DOWNLOADS[name]}")
    record_path.unlink(missing_ok=True)
    staging = folder / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for archive in archives:
            _unpack(Path(archive), staging, DOWNLOADS[name])
        described = ", ".join([*map(str, archives), *([f"--source {source}"] if source is not None else [])])
        roots = (staging,) if source is None else (staging, Path(source))
        official = READERS[name](Inputs(roots, described))
        _place(official.files, folder / fgvc.image_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    splits = dict(official.splits)
    drawn = "val" not in splits
    if drawn:
        splits["train"], splits["val"] = draw_val(official.splits["train"], seed)
    for split in SPLITS:
        _write_json(folder / f"{split}.json", splits[split])
    sizes = {split: len(splits[split]) for split in SPLITS}
    num_classes = len({label for part in splits.values() for label in part.values()})
    _write_json(record_path, {"dataset": name, "seed": seed if drawn else None, "sizes": sizes,
                              "num_classes": num_classes})
    return Prepared(folder, sizes, num_classes, skipped=False)
