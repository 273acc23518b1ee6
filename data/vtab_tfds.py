"""VTAB-1k from TensorFlow Datasets: builder, split slices, image and label map of each task.

Facts from `shared/reference/benchmarks.md` §A.1–A.3 (task_adaptation's definitions): `train800` is the first 800
examples of the task's train source, `val200` the first 200 of its val source, `test` the test source;
`train800val200` is `train800` then `val200`. TensorFlow and TFDS are the optional `data` extra, imported on use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from data.task import DataError
from data.vtab import vtab_task

Example = Mapping[str, Any]
SOURCE_SPLITS = ("train800", "val200", "test")  # read from TFDS; train800val200 is their concatenation

# The VTAB-1k test split sizes (task_adaptation's slices of the TFDS builders): a built test split must have these.
TEST_SIZES = {
    "cifar": 10_000, "caltech101": 6_084, "dtd": 1_880, "oxford_flowers102": 6_149, "oxford_iiit_pet": 3_669,
    "svhn": 26_032, "sun397": 21_750, "patch_camelyon": 32_768, "eurosat": 5_400, "resisc45": 6_300,
    "diabetic_retinopathy": 42_670, "clevr_count": 15_000, "clevr_dist": 15_000, "dmlab": 22_735, "kitti": 711,
    "dsprites_loc": 73_728, "dsprites_ori": 73_728, "smallnorb_azi": 12_150, "smallnorb_ele": 12_150,
}


def rgb_image(example: Example) -> np.ndarray:
    """The example's `image` as uint8 H×W×3 (a single grey channel is repeated)."""
    image = np.asarray(example["image"])
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def dsprites_image(example: Example) -> np.ndarray:
    """The binary 64×64×1 dSprites image as uint8 0/255 on 3 channels."""
    return np.repeat(np.asarray(example["image"], dtype=np.uint8), 3, axis=-1) * np.uint8(255)


def tfds_label(example: Example) -> int:
    """The TFDS `label` feature as is."""
    return int(example["label"])


def _bin(value: float, thresholds: tuple[float, ...]) -> int:
    """Index of the largest threshold strictly below `value` (task_adaptation's `reduce_max(where(thrs - d < 0))`)."""
    below = np.flatnonzero(np.asarray(thresholds, dtype=np.float32) < np.float32(value))
    if below.size == 0:
        raise DataError(f"value {value} is not above the lowest threshold {thresholds[0]}")
    return int(below[-1])


CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def clevr_count(example: Example) -> int:
    """Number of objects in the scene − 3 (scenes hold 3–10 objects)."""
    return len(example["objects"]["size"]) - 3


def clevr_distance(example: Example) -> int:
    """Bin of the smallest depth (`pixel_coords[:, 2]`) over the objects, 6 bins."""
    depth = np.asarray(example["objects"]["pixel_coords"], dtype=np.float32).reshape(-1, 3)[:, 2]
    return _bin(float(depth.min()), CLEVR_DISTANCE_THRESHOLDS)


def kitti_distance(example: Example) -> int:
    """Bin of the closest vehicle's z (types 0–2: Car, Van, Truck): ≤8 m, ≤20 m, ≤999 m, or 3 = no vehicle."""
    objects = example["objects"]
    z = np.asarray(objects["location"], dtype=np.float32).reshape(-1, 3)[:, 2]
    vehicle_z = z[np.asarray(objects["type"]).reshape(-1) < 3]
    return _bin(float(np.append(vehicle_z, np.float32(1000.0)).min()), KITTI_DISTANCE_THRESHOLDS)


def dsprites_x_position(example: Example) -> int:
    """The 32 x positions binned to 16 (value // 2)."""
    return int(np.floor(np.float32(example["label_x_position"]) / np.float32(32 / 16)))


def dsprites_orientation(example: Example) -> int:
    """The 40 orientations binned to 16 (value // 2.5)."""
    return int(np.floor(np.float32(example["label_orientation"]) / np.float32(40 / 16)))


def smallnorb_azimuth(example: Example) -> int:
    """The TFDS `label_azimuth` (18 values)."""
    return int(example["label_azimuth"])


def smallnorb_elevation(example: Example) -> int:
    """The TFDS `label_elevation` (9 values)."""
    return int(example["label_elevation"])


@dataclass(frozen=True)
class ManualDownload:
    """What a builder without a download URL needs in TFDS's manual_dir, and how to get it."""

    needs: tuple[str, ...]  # entries of manual_dir the builder reads
    how: str  # one sentence: what to download and where from


@dataclass(frozen=True)
class TfdsTask:
    """How one VTAB-1k task is read from TFDS."""

    builder: str  # TFDS name[/config]:version as passed to tfds.load
    splits: dict[str, str]  # train800 / val200 / test → TFDS split slice
    label: Callable[[Example], int] = tfds_label
    image: Callable[[Example], np.ndarray] = rgb_image
    manual: ManualDownload | None = None


def _splits(train800: str, val200: str, test: str) -> dict[str, str]:
    return {"train800": train800, "val200": val200, "test": test}


_RESISC45 = ManualDownload(("NWPU-RESISC45",), "download NWPU-RESISC45.rar from "
                           "https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs and extract it (giving NWPU-RESISC45/)")
_DIABETIC_RETINOPATHY = ManualDownload(
    ("train", "test", "sample", "trainLabels.csv"),
    "download the Kaggle competition files (`kaggle competitions download -c diabetic-retinopathy-detection`, "
    "all train.zip.00* parts) and unpack train/, test/, sample/ and trainLabels.csv",
)
_CLEVR = _splits("train[:800]", "train[63000:63200]", "validation")
_DSPRITES = _splits("train[:800]", "train[589824:590024]", "train[663552:]")
_SMALLNORB = _splits("train[:800]", "test[:200]", "test[50%:]")

# Keyed by the NOAH folder names of `data.vtab.VTAB_TASKS`.
TFDS_TASKS: dict[str, TfdsTask] = {
    "cifar": TfdsTask("cifar100:3.*.*", _splits("train[:800]", "train[45000:45200]", "test")),
    "caltech101": TfdsTask("caltech101:3.*.*", _splits("train[:800]", "train[2754:2954]", "test")),
    "dtd": TfdsTask("dtd:3.*.*", _splits("train[:800]", "validation[:200]", "test")),
    "oxford_flowers102": TfdsTask("oxford_flowers102:2.*.*", _splits("train[:800]", "validation[:200]", "test")),
    # task_adaptation asks for 3.*.* (VPT used 3.2.0); tfds 4.9.10 supports 4.0.0 only.
    "oxford_iiit_pet": TfdsTask("oxford_iiit_pet:4.*.*", _splits("train[:800]", "train[2944:3144]", "test")),
    "svhn": TfdsTask("svhn_cropped:3.*.*", _splits("train[:800]", "train[65931:66131]", "test")),
    "sun397": TfdsTask("sun397/tfds:4.*.*", _splits("train[:800]", "validation[:200]", "test")),
    "patch_camelyon": TfdsTask("patch_camelyon:2.*.*", _splits("train[:800]", "validation[:200]", "test")),
    "eurosat": TfdsTask("eurosat/rgb:2.*.*", _splits("train[:800]", "train[16200:16400]", "train[21600:]")),
    "resisc45": TfdsTask("resisc45:3.*.*", _splits("train[:800]", "train[18900:19100]", "train[25200:]"),
                         manual=_RESISC45),
    "diabetic_retinopathy": TfdsTask("diabetic_retinopathy_detection/btgraham-300:3.*.*",
                                     _splits("train[:800]", "validation[:200]", "test"),
                                     manual=_DIABETIC_RETINOPATHY),
    "clevr_count": TfdsTask("clevr:3.*.*", _CLEVR, label=clevr_count),
    "clevr_dist": TfdsTask("clevr:3.*.*", _CLEVR, label=clevr_distance),
    "dmlab": TfdsTask("dmlab:2.0.1", _splits("train[:800]", "validation[:200]", "test")),
    # task_adaptation pins 3.1.0, which no longer builds; VPT and NOAH use 3.2.0.
    "kitti": TfdsTask("kitti:3.2.0", _splits("train[:800]", "validation[:200]", "test"), label=kitti_distance),
    "dsprites_loc": TfdsTask("dsprites:2.*.*", _DSPRITES, label=dsprites_x_position, image=dsprites_image),
    "dsprites_ori": TfdsTask("dsprites:2.*.*", _DSPRITES, label=dsprites_orientation, image=dsprites_image),
    "smallnorb_azi": TfdsTask("smallnorb:2.*.*", _SMALLNORB, label=smallnorb_azimuth),
    "smallnorb_ele": TfdsTask("smallnorb:2.*.*", _SMALLNORB, label=smallnorb_elevation),
}


def import_tfds() -> ModuleType:
    """`tensorflow_datasets`, or a DataError saying how to install the data extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise DataError(f"preparing VTAB-1k needs TensorFlow Datasets ({exc}); install the data extra with "
                        f'`pip install -e ".[data]"` (or `make install-data`)') from exc
    return tfds


def tfds_data_dir(data_dir: str | Path | None) -> Path:
    """The TFDS data_dir: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's default)."""
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def tfds_manual_dir(data_dir: str | Path | None, manual_dir: str | Path | None) -> Path:
    """The manual_dir: `manual_dir`, else TFDS's default `<data_dir>/downloads/manual`."""
    return Path(manual_dir).expanduser() if manual_dir else tfds_data_dir(data_dir) / "downloads" / "manual"


def _builder(tfds: ModuleType, task: str, data_dir: str | Path | None) -> Any:
    spec = TFDS_TASKS[task].builder
    try:
        return tfds.builder(spec, data_dir=str(tfds_data_dir(data_dir)))
    except (AssertionError, tfds.core.DatasetNotFoundError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DataError(f"{task}: tensorflow-datasets {tfds.__version__} cannot build {spec} ({reason}); install "
                        f'the versions of the data extra (`pip install -e ".[data]"`)') from exc


def builder_name(task: str, data_dir: str | Path | None = None) -> str:
    """The TFDS name/config/version the task's builder string resolves to, e.g. `cifar100/3.0.2`."""
    return _builder(import_tfds(), task, data_dir).info.full_name


def check_manual_download(task: str, data_dir: str | Path | None, manual_dir: str | Path | None) -> None:
    """A DataError naming what to put where when a manual-download builder is neither prepared nor fed."""
    source = TFDS_TASKS[task]
    if source.manual is None or _builder(import_tfds(), task, data_dir).is_prepared():
        return
    folder = tfds_manual_dir(data_dir, manual_dir)
    missing = [name for name in source.manual.needs if not (folder / name).exists()]
    if missing:
        raise DataError(f"{task}: TFDS cannot download it and {folder} lacks {', '.join(missing)}; "
                        f"{source.manual.how} into {folder}, or pass --manual-dir <folder that holds them>")


def open_split(task: str, split: str, data_dir: str | Path | None = None,
               manual_dir: str | Path | None = None) -> tuple[int | None, Iterator[tuple[np.ndarray, int]]]:
    """(number of examples or None, iterator of (uint8 H×W×3 image, label)) for a source split of a task.

    Downloads and prepares the TFDS builder on first use; reads in record order (`shuffle_files=False`).
    """
    if split not in SOURCE_SPLITS:
        raise DataError(f"split '{split}' is not read from TFDS; choose one of: {', '.join(SOURCE_SPLITS)}")
    source, num_classes = TFDS_TASKS[task], vtab_task(task).num_classes
    tfds = import_tfds()
    _builder(tfds, task, data_dir)  # a one-line DataError when this tfds cannot make the builder
    check_manual_download(task, data_dir, manual_dir)
    config = tfds.download.DownloadConfig(manual_dir=str(tfds_manual_dir(data_dir, manual_dir)))
    dataset = tfds.load(source.builder, split=source.splits[split], data_dir=str(tfds_data_dir(data_dir)),
                        shuffle_files=False, download_and_prepare_kwargs={"download_config": config})
    size = int(dataset.cardinality())

    def examples() -> Iterator[tuple[np.ndarray, int]]:
        for index, example in enumerate(tfds.as_numpy(dataset)):
            image, label = source.image(example), source.label(example)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise DataError(f"{task} {split} example {index}: image is {image.dtype} {image.shape}, "
                                f"expected uint8 H×W×3")
            if not 0 <= label < num_classes:
                raise DataError(f"{task} {split} example {index}: label {label} is outside [0, {num_classes}); "
                                f"the TFDS data ({source.builder}) does not match the VTAB-1k definition")
            yield image, label

    return (size if size >= 0 else None), examples()
