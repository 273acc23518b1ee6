"""scripts/prepare_fgvc.py: tiny archives laid out like the five original FGVC downloads → VPT's json splits."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from data import DecodeCache, Geometry
from data.fgvc import FGVC_SETS, FgvcSource, fgvc_set
from data.fgvc_prepare import RECORD, STAGING, draw_val, prepare, val_count
from data.task import DataError
from runners.errors import guard
from scripts.prepare_fgvc import main
from tests.conftest import run_cli


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def _write(path: Path, content: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _tar(archive: Path, tree: Path, *names: str) -> Path:
    with tarfile.open(archive, "w:gz" if archive.suffix in (".tgz", ".gz") else "w") as tar:
        for name in names:
            tar.add(tree / name, arcname=name)
    return archive


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    cell[:, 0] = strings
    return cell


def _birds(out: Path, nabirds: bool) -> tuple[list[Path], dict]:
    """CUB_200_2011.tgz / nabirds.tar.gz: 4 classes × 8 images, 6 train and 2 test per class."""
    top = "nabirds" if nabirds else "CUB_200_2011"
    classes = [295, 313, 817, 1010] if nabirds else [1, 2, 3, 4]
    tree = out / "tree"
    rows: dict[str, list[str]] = {"images": [], "labels": [], "split": []}
    official: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    number = 0
    for label in classes:
        for i in range(8):
            number += 1
            image_id = str(uuid.UUID(int=number)) if nabirds else str(number)
            relative = f"{label:04d}/{image_id.replace('-', '')}.jpg" if nabirds else \
                f"{label:03d}.Bird_{label}/Bird_{label}_{i}.jpg"
            _write(tree / top / "images" / relative, JPEG)
            rows["images"].append(f"{image_id} {relative}")
            rows["labels"].append(f"{image_id} {label}")
            rows["split"].append(f"{image_id} {int(i < 6)}")
            official["train" if i < 6 else "test"][relative] = label
    for name, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                      ("train_test_split.txt", "split")):
        _write(tree / top / name, "\n".join(rows[key]) + "\n")
    return [_tar(out / ("nabirds.tar.gz" if nabirds else "CUB_200_2011.tgz"), tree, top)], official


def _flowers(out: Path) -> tuple[list[Path], dict]:
    """102flowers.tgz + imagelabels.mat + setid.mat: 3 classes × 6 images, ids interleaved across splits."""
    tree = out / "tree"
    labels = [1 + (i % 3) for i in range(18)]  # image id i+1 has class labels[i]
    for i in range(18):
        _write(tree / "jpg" / f"image_{i + 1:05d}.jpg", JPEG)
    ids = {"trnid": [1, 2, 3, 10, 11, 12], "valid": [4, 5, 6, 13, 14, 15], "tstid": [7, 8, 9, 16, 17, 18]}
    sio.savemat(out / "imagelabels.mat", {"labels": np.array([labels], dtype=float)})
    sio.savemat(out / "setid.mat", {k: np.array([v], dtype=float) for k, v in ids.items()})
    official = {split: {f"jpg/image_{i:05d}.jpg": labels[i - 1] for i in ids[field]}
                for split, field in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    return [_tar(out / "102flowers.tgz", tree, "jpg"), out / "imagelabels.mat", out / "setid.mat"], official


def _dogs(out: Path) -> tuple[list[Path], dict]:
    """images.tar + lists.tar: 3 breeds × 7 images, 5 train and 2 test per breed."""
    tree = out / "tree"
    official: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for label in (1, 2, 3):
        breed = f"n0208562{label}-Breed_{label}"
        for i in range(7):
            relative = f"{breed}/n0208562{label}_{i}.jpg"
            _write(tree / "Images" / relative, JPEG)
            official["train" if i < 5 else "test"][relative] = label
    for split, part in official.items():
        files = list(part)
        sio.savemat(tree / f"{split}_list.mat", {
            "file_list": _cell(files), "annotation_list": _cell([f.removesuffix(".jpg") for f in files]),
            "labels": np.array([[label] for label in part.values()], dtype=float)})
    return [_tar(out / "images.tar", tree, "Images"), _tar(out / "lists.tar", tree, "train_list.mat",
                                                           "test_list.mat")], official


def _car_annotations(path: Path, labels: list[int]) -> None:
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    records = np.zeros((1, len(labels)), dtype=fields)
    for i, label in enumerate(labels):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 1, 3, 3)]
        records[0, i] = (*box, np.array([[label]], dtype=np.uint8), f"{i + 1:05d}.jpg")
    sio.savemat(path, {"annotations": records})


def _cars(out: Path) -> tuple[list[Path], dict]:
    """cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat: 3 models."""
    tree = out / "tree"
    train_labels, test_labels = [1, 2, 3] * 4, [3, 2, 1] * 2
    for folder, labels in (("cars_train", train_labels), ("cars_test", test_labels)):
        for i in range(len(labels)):
            _write(tree / folder / f"{i + 1:05d}.jpg", JPEG)
    (tree / "devkit").mkdir()
    _car_annotations(tree / "devkit" / "cars_train_annos.mat", train_labels)
    sio.savemat(tree / "devkit" / "cars_meta.mat", {"class_names": _cell(["Audi", "BMW", "Chevrolet"]).T})
    _car_annotations(out / "cars_test_annos_withlabels.mat", test_labels)
    official = {"train": {f"cars_train/{i + 1:05d}.jpg": v for i, v in enumerate(train_labels)},
                "test": {f"cars_test/{i + 1:05d}.jpg": v for i, v in enumerate(test_labels)}}
    return [_tar(out / "cars_train.tgz", tree, "cars_train"), _tar(out / "cars_test.tgz", tree, "cars_test"),
            _tar(out / "car_devkit.tgz", tree, "devkit"), out / "cars_test_annos_withlabels.mat"], official


BUILDERS = {
    "cub": lambda out: _birds(out, nabirds=False),
    "nabirds": lambda out: _birds(out, nabirds=True),
    "oxford_flowers": _flowers,
    "stanford_dogs": _dogs,
    "stanford_cars": _cars,
}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict[str, tuple[list[Path], dict]]:
    """Per dataset: (the files to pass as --archive, the official splits they encode)."""
    made = {}
    for name, build in BUILDERS.items():
        out = tmp_path_factory.mktemp(name)
        made[name] = build(out)
        shutil.rmtree(out / "tree")
    return made


def _splits(folder: Path) -> dict[str, dict[str, int]]:
    return {split: json.loads((folder / f"{split}.json").read_text()) for split in ("train", "val", "test")}


def test_val_rule_gives_vpts_sizes_on_the_real_datasets():
    for fgvc in FGVC_SETS:
        train, val, _ = fgvc.sizes
        if fgvc.name == "oxford_flowers":  # official val (setid.mat), not drawn
            continue
        assert val_count(train + val) == val, fgvc.name
    assert [val_count(n) for n in (5_994, 23_929, 12_000, 8_144)] == [600, 2_393, 1_200, 815]
    assert [val_count(n) for n in (1, 10, 11, 24)] == [1, 1, 2, 3]  # proportional on tiny sets


def test_draw_val_keeps_every_class_in_train():
    official = {f"rare_{c}.jpg": c for c in range(9)} | {f"common_{i}.jpg": 99 for i in range(11)}
    for seed in range(5):
        train, val = draw_val(official, seed)
        assert len(val) == 2 and set(val.values()) == {99}
        assert set(train.values()) == set(official.values()) and train.keys() | val.keys() == official.keys()
    with pytest.raises(DataError, match="too few"):
        draw_val({f"{c}.jpg": c for c in range(5)}, 0)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prepare_writes_vpt_splits_from_the_original_archives(name, downloads, tmp_path):
    archives, official = downloads[name]
    done = prepare(tmp_path, name, archives, seed=0)
    fgvc = fgvc_set(name)
    assert done.folder == tmp_path / fgvc.folder and not done.skipped
    splits = _splits(done.folder)
    assert done.sizes == {split: len(part) for split, part in splits.items()}
    if name == "oxford_flowers":
        assert splits == official  # setid.mat exactly
    else:
        assert len(splits["train"]) + len(splits["val"]) == len(official["train"])
        assert len(splits["val"]) == val_count(len(official["train"]))
        assert not splits["train"].keys() & splits["val"].keys()
        assert splits["train"] | splits["val"] == official["train"]  # val ⊂ official train, labels kept
        assert splits["test"] == official["test"]
    classes = set(official["train"].values())
    assert set(splits["train"].values()) == classes and done.num_classes == len(classes)
    for part in splits.values():
        assert all(type(label) is int for label in part.values())
        for relative in part:
            assert (done.folder / fgvc.image_dir / relative).read_bytes() == JPEG, relative
    assert not (done.folder / STAGING).exists() and (done.folder / RECORD).is_file()

    # what the runner's reader makes of it: train+val, ids remapped to 0..C−1
    loaded = FgvcSource(tmp_path, name).load("train+val", Geometry(8), DecodeCache(tmp_path / "cache"))
    assert len(loaded) == len(splits["train"]) + len(splits["val"])
    assert loaded.labels.unique().tolist() == list(range(len(classes)))


def test_seed_decides_the_val_draw(downloads, tmp_path):
    archives, _ = downloads["cub"]
    vals = [_splits(prepare(tmp_path / tag, "cub", archives, seed=seed).folder)["val"]
            for tag, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert vals[0] == vals[1] and vals[0] != vals[2]


def test_source_folder_extracted_in_place_or_elsewhere(downloads, tmp_path):
    archives, official = downloads["stanford_dogs"]
    extracted = tmp_path / "data" / "Stanford-dogs"  # the download extracted where the dataset belongs
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(extracted, filter="data")
    image = extracted / "Images" / next(iter(official["train"]))
    before = image.stat().st_ino
    done = prepare(tmp_path / "data", "stanford_dogs", source=extracted)
    assert image.stat().st_ino == before and len(_splits(done.folder)["test"]) == len(official["test"])
    elsewhere = prepare(tmp_path / "other", "stanford_dogs", source=tmp_path / "data", seed=0)
    assert _splits(elsewhere.folder) == _splits(done.folder) and image.is_file()


def test_rerun_skips_and_force_redraws(downloads, tmp_path):
    archives, _ = downloads["stanford_cars"]
    first = prepare(tmp_path, "stanford_cars", archives, seed=0)
    written = (first.folder / "val.json").stat().st_mtime_ns
    again = prepare(tmp_path, "stanford_cars", seed=0)  # no inputs needed to skip
    assert again.skipped and again.sizes == first.sizes
    assert (first.folder / "val.json").stat().st_mtime_ns == written
    with pytest.raises(DataError, match="--force"):
        prepare(tmp_path, "stanford_cars", archives, seed=3)
    redone = prepare(tmp_path, "stanford_cars", archives, seed=3, force=True)
    assert not redone.skipped and json.loads((first.folder / RECORD).read_text())["seed"] == 3


def test_interrupted_run_is_redone(downloads, tmp_path):
    archives, official = downloads["cub"]
    folder = prepare(tmp_path, "cub", archives).folder
    (folder / RECORD).unlink()  # as if stopped before the record
    (folder / STAGING / "leftover").mkdir(parents=True)
    done = prepare(tmp_path, "cub", archives)
    assert not done.skipped and done.sizes["test"] == len(official["test"]) and not (folder / STAGING).exists()


def test_script_prepares_then_skips(downloads, tmp_path, capsys):
    archives, official = downloads["cub"]
    args = ["--root", str(tmp_path), "--dataset", "cub", *(f"--archive={a}" for a in archives)]
    result = run_cli("scripts/prepare_fgvc.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cub: train 21, val 3, test 8, 4 classes (VPT's: train 5394")
    assert len(_splits(tmp_path / "CUB_200_2011")["test"]) == len(official["test"])
    guard(lambda: main(args))
    assert "already prepared" in capsys.readouterr().out


def _bad(downloads, tmp_path) -> dict[str, tuple[list[str], str]]:
    cars = [str(a) for a in downloads["stanford_cars"][0] if not a.name.endswith("withlabels.mat")]
    not_archive = tmp_path / "CUB_200_2011.tgz"
    not_archive.write_text("not an archive")
    return {
        "unknown key": (["--dataset", "cubs", "--archive", "x.tgz"], "unknown FGVC set 'cubs'"),
        "no input": (["--dataset", "cub"], "give the cub download (CUB_200_2011.tgz) with --archive"),
        "missing archive": (["--dataset", "cub", "--archive", str(tmp_path / "nope.tgz")], "does not exist"),
        "not an archive": (["--dataset", "cub", "--archive", str(not_archive)], "cannot unpack"),
        "other dataset": (["--dataset", "cub", *(f"--archive={a}" for a in downloads["stanford_dogs"][0])],
                          "no images.txt in"),
        "cub as nabirds": (["--dataset", "nabirds", f"--archive={downloads['cub'][0][0]}"],
                           "integer image ids (CUB-200-2011's)"),
        "missing annotation": (["--dataset", "stanford_cars", *(f"--archive={a}" for a in cars)],
                               "no cars_test_annos_withlabels.mat in"),
    }


@pytest.mark.parametrize("case", ["unknown key", "no input", "missing archive", "not an archive", "other dataset",
                                  "cub as nabirds", "missing annotation"])
def test_bad_input_is_one_line_and_exit_2(case, downloads, tmp_path, capsys):
    args, expected = _bad(downloads, tmp_path)[case]
    with pytest.raises(SystemExit) as exit_:
        guard(lambda: main(["--root", str(tmp_path / "data"), *args]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not list((tmp_path / "data").glob(f"*/{STAGING}"))  # a failed run leaves no extracted files behind
