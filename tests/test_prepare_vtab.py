"""VTAB-1k preparation from TFDS: the slice table, the label maps, and all 19 tasks built offline.

`tfds.testing.mock_data` returns `num_examples` random examples whatever the split slice, so the `mocked_tfds`
fixture wraps `tfds.load` to give each slice of the production table as many examples as TFDS would for split
sizes just large enough for that slice (e.g. `train[663552:]` → 20 examples), leaving the production code untouched;
the examples cycle through a pool of POOL random ones, because generating them dominates the run time, and pixel
values are 0 or 1 (as dSprites'), because JPEGs of full-range noise would make 450 MB of files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data import vtab_tfds
from data.task import DataError
from data.vtab import SPLITS, VTAB_TASKS
from data.vtab_tfds import TFDS_TASKS, open_split
from runners.errors import guard
from scripts import prepare_vtab
from scripts.prepare_vtab import main

# After the project's imports: TensorFlow imported before torch makes torch's triton import crash.
tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

OPEN_SLICE = 20  # examples a mocked open-ended or whole split holds beyond what the table's slices need
POOL = 50  # distinct random examples per mocked slice, repeated to the slice's size (random generation is slow)

# benchmarks.md §A.1 (builder) and §A.3 (train800 / val200 / test), per NOAH folder.
REFERENCE = {
    "cifar": ("cifar100:3.*.*", "train[:800]", "train[45000:45200]", "test"),
    "caltech101": ("caltech101:3.*.*", "train[:800]", "train[2754:2954]", "test"),
    "dtd": ("dtd:3.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("oxford_flowers102:2.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_iiit_pet": ("oxford_iiit_pet:4.*.*", "train[:800]", "train[2944:3144]", "test"),
    "svhn": ("svhn_cropped:3.*.*", "train[:800]", "train[65931:66131]", "test"),
    "sun397": ("sun397/tfds:4.*.*", "train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("patch_camelyon:2.*.*", "train[:800]", "validation[:200]", "test"),
    "eurosat": ("eurosat/rgb:2.*.*", "train[:800]", "train[16200:16400]", "train[21600:]"),
    "resisc45": ("resisc45:3.*.*", "train[:800]", "train[18900:19100]", "train[25200:]"),
    "diabetic_retinopathy": ("diabetic_retinopathy_detection/btgraham-300:3.*.*", "train[:800]",
                             "validation[:200]", "test"),
    "clevr_count": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "clevr_dist": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "dmlab": ("dmlab:2.0.1", "train[:800]", "validation[:200]", "test"),
    "kitti": ("kitti:3.2.0", "train[:800]", "validation[:200]", "test"),
    "dsprites_loc": ("dsprites:2.*.*", "train[:800]", "train[589824:590024]", "train[663552:]"),
    "dsprites_ori": ("dsprites:2.*.*", "train[:800]", "train[589824:590024]", "train[663552:]"),
    "smallnorb_azi": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
    "smallnorb_ele": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
}


def test_table_matches_reference():
    assert list(TFDS_TASKS) == [t.name for t in VTAB_TASKS]
    for task, (builder, train800, val200, test) in REFERENCE.items():
        source = TFDS_TASKS[task]
        assert (source.builder, source.splits) == (builder, {"train800": train800, "val200": val200, "test": test})
    assert {task for task, source in TFDS_TASKS.items() if source.manual} == {"resisc45", "diabetic_retinopathy"}


# ---- label maps and images on hand-made examples


def _clevr(depths: list[float]) -> dict:
    n = len(depths)
    coords = np.zeros((n, 3), np.float32)
    coords[:, 2] = depths
    return {"objects": {"size": np.zeros(n, np.int64), "pixel_coords": coords}}


def test_clevr_labels():
    assert vtab_tfds.clevr_count(_clevr([9.0] * 3)) == 0
    assert vtab_tfds.clevr_count(_clevr([9.0] * 10)) == 7
    expected = {7.9: 0, 8.0: 0, 8.2: 1, 8.5: 1, 8.7: 2, 9.2: 3, 9.7: 4, 10.0: 4, 10.01: 5, 14.0: 5}
    for depth, label in expected.items():
        assert vtab_tfds.clevr_distance(_clevr([20.0, depth, 30.0])) == label, depth


def _kitti(objects: list[tuple[int, float]]) -> dict:
    location = np.zeros((len(objects), 3), np.float32)
    location[:, 2] = [z for _, z in objects]
    return {"objects": {"type": np.array([t for t, _ in objects], np.int64).reshape(-1), "location": location}}


def test_kitti_labels():
    car, van, truck, pedestrian, cyclist = 0, 1, 2, 3, 5
    assert vtab_tfds.kitti_distance(_kitti([(car, 30.0), (van, 7.5), (pedestrian, 2.0)])) == 0
    assert vtab_tfds.kitti_distance(_kitti([(car, 8.0)])) == 0
    assert vtab_tfds.kitti_distance(_kitti([(truck, 8.1), (cyclist, 1.0)])) == 1
    assert vtab_tfds.kitti_distance(_kitti([(car, 20.0), (car, 50.0)])) == 1
    assert vtab_tfds.kitti_distance(_kitti([(van, 45.0)])) == 2
    assert vtab_tfds.kitti_distance(_kitti([(pedestrian, 5.0), (cyclist, 9.0)])) == 3  # no vehicle
    assert vtab_tfds.kitti_distance(_kitti([])) == 3


def test_dsprites_labels_and_image():
    assert [vtab_tfds.dsprites_x_position({"label_x_position": v}) for v in (0, 1, 2, 17, 31)] == [0, 0, 1, 8, 15]
    assert [vtab_tfds.dsprites_orientation({"label_orientation": v}) for v in (0, 2, 3, 5, 24, 25, 39)] == \
        [0, 0, 1, 2, 9, 10, 15]
    binary = np.zeros((64, 64, 1), np.uint8)
    binary[10:20, 30:40] = 1
    image = vtab_tfds.dsprites_image({"image": binary})
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) == {0, 255} and (image[15, 35] == 255).all() and (image[0, 0] == 0).all()


def test_smallnorb_labels_and_image():
    example = {"image": np.full((96, 96, 1), 7, np.uint8), "image2": np.full((96, 96, 1), 9, np.uint8),
               "label_azimuth": 17, "label_elevation": 8}
    assert vtab_tfds.smallnorb_azimuth(example) == 17 and vtab_tfds.smallnorb_elevation(example) == 8
    image = vtab_tfds.rgb_image(example)
    assert image.shape == (96, 96, 3) and (image == 7).all()  # the first view only
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert vtab_tfds.rgb_image({"image": rgb}) is rgb


# ---- TFDS mocked offline


def _fake_split_sizes(builder: str) -> dict[str, int]:
    """Per TFDS split of `builder`, the smallest size that holds every slice of the table plus OPEN_SLICE."""
    sizes: dict[str, int] = {}
    for source in TFDS_TASKS.values():
        if source.builder != builder:
            continue
        for spec in source.splits.values():
            name, start, start_pct, end, end_pct = re.fullmatch(r"(\w+)(?:\[(\d*)(%?):(\d*)(%?)\])?", spec).groups()
            if end and not end_pct:
                need = int(end)
            elif start and not start_pct:
                need = int(start) + OPEN_SLICE
            else:
                need = OPEN_SLICE
            sizes[name] = max(sizes.get(name, 0), need)
    return sizes


def slice_size(builder: str, split: str) -> int:
    """How many examples TFDS returns for `split` with the fake split sizes of `builder`."""
    sizes = _fake_split_sizes(builder)
    infos = {name: SimpleNamespace(num_examples=n) for name, n in sizes.items()}
    ranges = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)  # None: the split's start or end
    return sum((sizes[r.splitname] if r.to is None else r.to) - (r.from_ or 0) for r in ranges)


def _same_object_count(example: dict) -> dict:
    objects = example["objects"]
    count = tf.reduce_min([tf.shape(v)[0] for v in objects.values()] + [10])
    return {**example, "objects": {k: v[:count] for k, v in objects.items()}}


@pytest.fixture(scope="module")
def mocked_tfds() -> Iterator[None]:
    """TFDS offline: random examples with each builder's features, as many as the requested slice holds."""
    real_load = tfds.load

    def load(name: str, *, split: str, **kwargs):
        size = slice_size(name, split)
        with tfds.testing.mock_data(num_examples=min(size, POOL), max_value=2,
                                    policy=tfds.testing.MockPolicy.USE_CODE):
            pool = real_load(name, split=split, **kwargs)
        if "objects" in pool.element_spec:  # mock features of one object differ in length; CLEVR has 3–10
            pool = pool.map(_same_object_count)
        return pool.cache().repeat().take(size)

    mocked_test_sizes = {task: slice_size(source.builder, source.splits["test"]) for task, source in TFDS_TASKS.items()}
    with pytest.MonkeyPatch.context() as patch, tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):
        patch.setattr(tfds, "load", load)
        patch.setattr(vtab_tfds, "TEST_SIZES", mocked_test_sizes)
        yield


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory) -> Path:
    """A manual_dir holding the entries the resisc45 and diabetic_retinopathy builders read."""
    folder = tmp_path_factory.mktemp("manual")
    for task in ("resisc45", "diabetic_retinopathy"):
        for name in TFDS_TASKS[task].manual.needs:
            (folder / name).mkdir()
    return folder


def _scratch() -> tempfile.TemporaryDirectory:
    """A folder removed afterwards, in /dev/shm where there is one (disks are slow with 40k small files)."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)


@pytest.fixture
def scratch() -> Iterator[Path]:
    with _scratch() as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def prepared_all(mocked_tfds, manual_dir) -> Iterator[Path]:
    """All 19 tasks prepared as JPEG through the script's main; the vtab-1k folder."""
    with _scratch() as folder:
        root = Path(folder)
        main(["--root", str(root), "--tasks", "all", "--manual-dir", str(manual_dir), "--tfds-dir", str(root / "tfds")])
        yield root / "vtab-1k"


def _read_list(path: Path) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.split(" ") for line in path.read_text().splitlines())]


@pytest.mark.tfds
def test_all_tasks_prepared(prepared_all):
    assert sorted(p.name for p in prepared_all.iterdir()) == sorted(t.name for t in VTAB_TASKS)
    for task in VTAB_TASKS:
        folder = prepared_all / task.name
        source = TFDS_TASKS[task.name]
        test_size = slice_size(source.builder, source.splits["test"])
        expected = {"train800": 800, "val200": 200, "train800val200": 1000, "test": test_size}
        lists = {split: _read_list(folder / f"{split}.txt") for split in SPLITS}
        assert {split: len(lines) for split, lines in lists.items()} == expected, task.name
        for split, lines in lists.items():
            assert [p for p, _ in lines] == [f"images/{split}/{i:06d}.jpg" for i in range(len(lines))]
            assert all(0 <= label < task.num_classes for _, label in lines), (task.name, split)
            assert all((folder / p).is_file() for p, _ in lines), (task.name, split)
        # NOAH's order: blocks of 16 alternating (train 0-15, val 0-15, train 16-31, ...), val used up at 200
        noah = [("train800", i) for i in range(16)] + [("val200", i) for i in range(16)] + \
            [("train800", i) for i in range(16, 32)]
        noah_tail = [("val200", i) for i in range(192, 200)] + [("train800", i) for i in range(208, 800)]
        order = noah + [None] * (1000 - len(noah) - len(noah_tail)) + noah_tail
        for i, origin in enumerate(order):
            if origin is not None:
                split, j = origin
                assert lists["train800val200"][i][1] == lists[split][j][1], (task.name, i)
        for i, (split, j) in ((0, ("train800", 0)), (16, ("val200", 0)), (399, ("train800", 207)),
                              (407, ("val200", 199)), (408, ("train800", 208)), (999, ("train800", 799))):
            assert (folder / f"images/train800val200/{i:06d}.jpg").read_bytes() == \
                (folder / f"images/{split}/{j:06d}.jpg").read_bytes(), (task.name, i)
        with Image.open(folder / lists["test"][0][0]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
        record = json.loads((folder / "prepared.json").read_text())
        assert record["format"] == "jpg" and record["counts"] == expected and record["tfds_builder"] == source.builder
        assert record["tfds_resolved"].startswith(source.builder.split(":")[0] + "/")
        assert record["tfds_version"] == tfds.__version__
        assert re.fullmatch(r"[0-9a-f]{16}", record["fingerprint"])
        assert record["train800val200_order"].startswith("NOAH")
    assert not list(prepared_all.glob(".*.partial"))


@pytest.mark.tfds
def test_png_is_lossless(scratch, mocked_tfds):
    main(["--root", str(scratch), "--tasks", "cifar100", "--format", "png"])
    folder = scratch / "vtab-1k" / "cifar"
    lines = _read_list(folder / "test.txt")
    _, examples = open_split("cifar", "test")
    for (path, label), (image, expected_label) in zip(lines, examples, strict=True):
        assert path.endswith(".png") and label == expected_label
        with Image.open(folder / path) as saved:
            assert np.array_equal(np.asarray(saved), image)


@pytest.mark.tfds
def test_rerun_skips_complete_and_rebuilds_partial(scratch, mocked_tfds, monkeypatch, capsys):
    args = ["--root", str(scratch), "--tasks", "dtd,svhn"]
    vtab_dir = scratch / "vtab-1k"
    real_open = prepare_vtab.open_split

    def crash_in_svhn_train800(task, split, *rest):
        size, examples = real_open(task, split, *rest)
        if (task, split) != ("svhn", "train800"):
            return size, examples

        def interrupted():
            yield from itertools.islice(examples, 5)
            raise RuntimeError("interrupted")

        return size, interrupted()

    monkeypatch.setattr(prepare_vtab, "open_split", crash_in_svhn_train800)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(args)
    assert (vtab_dir / "dtd" / "prepared.json").is_file()
    assert not (vtab_dir / "svhn").exists()
    assert len(list((vtab_dir / ".svhn.partial" / "images" / "train800").iterdir())) == 5

    opened: list[str] = []
    monkeypatch.setattr(prepare_vtab, "open_split", lambda task, *rest: opened.append(task) or real_open(task, *rest))
    dtd_record = (vtab_dir / "dtd" / "prepared.json").read_text()
    main(args)
    assert set(opened) == {"svhn"}  # dtd skipped without reading TFDS
    assert "dtd: already prepared" in capsys.readouterr().err
    assert (vtab_dir / "dtd" / "prepared.json").read_text() == dtd_record
    assert len(_read_list(vtab_dir / "svhn" / "train800val200.txt")) == 1000
    assert len(list((vtab_dir / "svhn" / "images" / "train800").iterdir())) == 800
    assert not (vtab_dir / ".svhn.partial").exists()

    opened.clear()
    (vtab_dir / "dtd" / "stale").touch()
    main(["--root", str(scratch), "--tasks", "dtd", "--force"])
    assert opened == ["dtd"] * 3 and not (vtab_dir / "dtd" / "stale").exists()


def test_noah_order():
    train, val = [f"t{i}" for i in range(800)], [f"v{i}" for i in range(200)]
    merged = prepare_vtab.noah_order(train, val)
    assert sorted(merged) == sorted(train + val)
    assert merged[:34] == train[:16] + val[:16] + train[16:18]
    assert merged[384:409] == train[192:208] + val[192:200] + [train[208]]


def _user_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        guard(lambda: main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


@pytest.mark.tfds
def test_manual_download_missing(tmp_path, mocked_tfds, capsys):
    manual = tmp_path / "manual"
    err = _user_error(["--root", str(tmp_path), "--tasks", "resisc45", "--manual-dir", str(manual)], capsys)
    assert "NWPU-RESISC45.rar" in err and str(manual) in err and "--manual-dir" in err
    err = _user_error(["--root", str(tmp_path), "--tasks", "diabetic_retinopathy", "--tfds-dir", str(tmp_path)],
                      capsys)
    assert "trainLabels.csv" in err and str(tmp_path / "downloads" / "manual") in err and "--manual-dir" in err
    assert not (tmp_path / "vtab-1k").exists()  # nothing written before the data is there


@pytest.mark.tfds
def test_user_errors(tmp_path, capsys):
    assert "unknown VTAB-1k task 'cifar10'" in _user_error(["--root", str(tmp_path), "--tasks", "cifar10"], capsys)
    assert "--format" in _user_error(["--root", str(tmp_path), "--format", "webp"], capsys)
    assert "--root" in _user_error(["--tasks", "dtd"], capsys)
    foreign = tmp_path / "vtab-1k" / "dtd"
    foreign.mkdir(parents=True)
    assert "prepared.json" in _user_error(["--root", str(tmp_path), "--tasks", "dtd"], capsys)
    shutil.rmtree(foreign)
    foreign.mkdir()
    (foreign / "prepared.json").write_text(json.dumps({"format": "png"}))
    assert "--force" in _user_error(["--root", str(tmp_path), "--tasks", "dtd"], capsys)


@pytest.mark.tfds
def test_short_split_stops(tmp_path, mocked_tfds, monkeypatch, capsys):
    monkeypatch.setitem(vtab_tfds.TEST_SIZES, "dtd", vtab_tfds.TEST_SIZES["dtd"] + 1)
    err = _user_error(["--root", str(tmp_path), "--tasks", "dtd"], capsys)
    assert "dtd: test (test) has" in err and "VTAB-1k has" in err and "--force" in err
    assert not (tmp_path / "vtab-1k" / "dtd").exists()


@pytest.mark.tfds
def test_unknown_builder_version(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TFDS_TASKS, "dtd", dataclasses.replace(TFDS_TASKS["dtd"], builder="dtd:9.*.*"))
    err = _user_error(["--root", str(tmp_path), "--tasks", "dtd", "--tfds-dir", str(tmp_path)], capsys)
    assert "dtd:9.*.*" in err and "cannot be loaded at version" in err


def test_missing_tensorflow_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=r'pip install -e "\.\[data\]"'):
        vtab_tfds.import_tfds()
