"""VTAB-1k, FGVC and few-shot readers, the decode-once cache, device augmentation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data.cache
from data import DataError, DecodeCache, Geometry, build_task
from runners import compose, run
from tests.conftest import run_cli
from tests.datasets import VTAB_SIZES, make_fewshot_set, make_fgvc_set, make_vtab_task


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def task_for(tmp_path, data_dir, *overrides, protocol="final"):
    cfg = compose(["backbone=vit_test", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
                   f"protocol={protocol}", *overrides])
    cache = DecodeCache(cfg.data.cache_dir, cfg.data.decode_workers, cfg.data.skip_corrupt)
    return build_task(cfg.dataset, cfg.protocol, cfg.pipeline, cfg.backbone.image_size, cache)


def test_vtab_protocols_read_the_noah_lists(tmp_path, data_dir):
    make_vtab_task(data_dir, "eurosat", 10)
    final = task_for(tmp_path, data_dir, "dataset=vtab/eurosat")
    assert (final.name, final.group, final.num_classes) == ("eurosat", "Specialized", 10)
    assert len(final.train) == VTAB_SIZES["train800"] + VTAB_SIZES["val200"] and len(final.eval) == VTAB_SIZES["test"]
    assert final.train.images.shape[1:] == (3, 32, 32) and final.train.images.dtype == torch.uint8
    assert final.meta["data_format"] == "NOAH vtab-1k list files (png)"
    assert final.meta["eval_preprocessing"] == "resize to 32x32 (bicubic)"
    tune = task_for(tmp_path, data_dir, "dataset=vtab/eurosat", protocol="tune")
    assert (tune.meta["train_split"], tune.meta["eval_split"]) == ("train800", "val200")
    assert len(tune.train) == VTAB_SIZES["train800"] and len(tune.eval) == VTAB_SIZES["val200"]


def test_vtab_run_end_to_end(tmp_path, data_dir, tiny_cfg):
    make_vtab_task(data_dir, "dtd", 4, ext="jpg")
    metrics = run(tiny_cfg("dataset=vtab/dtd", "dataset.num_classes=4", "method=linear", f"paths.data_dir={data_dir}",
                           f"paths.cache_dir={tmp_path / 'cache'}"))
    assert metrics["task"] == "dtd" and metrics["benchmark"] == "vtab" and metrics["group"] == "Natural"
    assert metrics["provenance"]["data_format"] == "NOAH vtab-1k list files (jpg)"
    run_dir = Path(metrics["config"]["paths"]["run_dir"]).relative_to(metrics["config"]["paths"]["runs"])
    assert run_dir.parts[:4] == ("vtab", "dtd", "linear", "vit_test") and run_dir.name == "seed42"
    assert run_dir.parts[4].startswith("dataset.num_classes@4+epochs@2+")


def test_images_are_decoded_once(tmp_path, data_dir, monkeypatch):
    folder = make_vtab_task(data_dir, "svhn", 10)
    first = task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 2  # train800val200 and test

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(data.cache.Image, "open", no_decoding)
    again = task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.eval.labels, again.eval.labels)
    monkeypatch.undo()

    lines = (folder / "test.txt").read_text().splitlines()
    path, label = lines[0].rsplit(" ", 1)
    lines[0] = f"{path} {(int(label) + 1) % 10}"  # an edited list is a new cache entry, never a stale one
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    edited = task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    assert int(edited.eval.labels[0]) == (int(label) + 1) % 10
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 3


def test_killed_cache_build_leaves_nothing_complete(tmp_path, data_dir, monkeypatch):
    make_vtab_task(data_dir, "svhn", 10)
    calls = {"n": 0}
    decode = data.cache._decode

    def die_midway(path, geometry):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return decode(path, geometry)

    monkeypatch.setattr(data.cache, "_decode", die_midway)
    with pytest.raises(KeyboardInterrupt):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    assert not list((tmp_path / "cache" / "decoded").iterdir())
    monkeypatch.undo()
    assert len(task_for(tmp_path, data_dir, "dataset=vtab/svhn").train) == 24


def test_fgvc_json_layout_with_vpts_pipeline(tmp_path, data_dir):
    make_fgvc_set(data_dir, "CUB_200_2011", "images", 5)
    task = task_for(tmp_path, data_dir, "dataset=fgvc/cub", "dataset.num_classes=5", "pipeline.source_size=37")
    assert task.meta["train_split"] == "train" and len(task.train) == 5 * 3 and len(task.eval) == 5 * 2  # VPT's
    assert sorted(task.train.labels.unique().tolist()) == [0, 1, 2, 3, 4]  # 1-based ids remapped
    assert task.train.sizes is not None and int(task.train.sizes.min()) == 37  # shorter side 37, aspect kept
    assert task.eval.images.shape[-2:] == (32, 32)
    assert task.meta["eval_preprocessing"] == "resize shorter side to 37 (bilinear), centre crop 32"
    assert "RandomCrop → RandomHorizontalFlip" in task.meta["train_preprocessing"]
    ssf = task_for(tmp_path, data_dir, "dataset=fgvc/cub", "dataset.num_classes=5", "pipeline=fgvc_ssf",
                   "pipeline.source_size=40")
    assert ssf.meta["train_split"] == "train+val" and len(ssf.train) == 5 * 4
    tune = task_for(tmp_path, data_dir, "dataset=fgvc/cub", "dataset.num_classes=5", protocol="tune")
    assert (len(tune.train), len(tune.eval)) == (15, 5)


def test_fewshot_lists(tmp_path, data_dir):
    make_fewshot_set(data_dir, "oxford-pets", 37, shots=4, seed=1)
    task = task_for(tmp_path, data_dir, "dataset=fewshot/oxford_pets", "dataset.shots=4", "dataset.fewshot_seed=1")
    assert len(task.train) == 37 * 4 and len(task.eval) == 37 * 2
    with pytest.raises(DataError, match="dataset.shots=3 has no list"):
        task_for(tmp_path, data_dir, "dataset=fewshot/oxford_pets", "dataset.shots=3")


# -- bad input: one clear line each -------------------------------------------------------------------------

def test_missing_task_folder_through_train_py(tmp_path):
    out = run_cli("train.py", "dataset=vtab/kitti", "backbone=vit_test", "logger=none", f"paths.data_dir={tmp_path}",
                  f"paths.runs={tmp_path / 'runs'}", cwd=tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert f"{tmp_path}/vtab-1k/kitti does not exist" in line and "prepare_vtab.py --root" in line


def test_list_line_pointing_to_a_missing_file(tmp_path, data_dir):
    folder = make_vtab_task(data_dir, "svhn", 10)
    (folder / "images" / "test" / "000003.png").unlink()
    with pytest.raises(DataError, match=r"test.txt:4: image .*000003.png does not exist"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")


def test_corrupt_image_stops_unless_skipped(tmp_path, data_dir, caplog):
    folder = make_vtab_task(data_dir, "svhn", 10)
    bad = folder / "images" / "test" / "000002.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=f"image {bad} is corrupt or truncated.*data.skip_corrupt=true"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    task = task_for(tmp_path, data_dir, "dataset=vtab/svhn", "data.skip_corrupt=true")
    assert len(task.eval) == VTAB_SIZES["test"] - 1
    assert "left out 1 corrupt image(s) of 12" in caplog.text


def test_label_outside_the_class_count(tmp_path, data_dir):
    folder = make_vtab_task(data_dir, "svhn", 10)
    (folder / "test.txt").write_text((folder / "test.txt").read_text().replace(" 3\n", " 10\n", 1))
    with pytest.raises(DataError, match=r"split test: label 10 is outside \[0, 10\)"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")


def test_class_count_that_disagrees_with_the_data(tmp_path, data_dir):
    make_vtab_task(data_dir, "svhn", 8)  # svhn's config says 10 classes
    with pytest.raises(DataError, match="dataset.num_classes=10 but the labels .* cover 8 classes"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")


def test_empty_split_and_malformed_line(tmp_path, data_dir):
    folder = make_vtab_task(data_dir, "svhn", 10)
    (folder / "test.txt").write_text("\n")
    with pytest.raises(DataError, match=f"list file {folder / 'test.txt'} is empty"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")
    (folder / "test.txt").write_text("images/test/000000.png seven\n")
    with pytest.raises(DataError, match="test.txt:1: expected '<relative/path> <integer label>'"):
        task_for(tmp_path, data_dir, "dataset=vtab/svhn")


def test_fgvc_bad_json(tmp_path, data_dir):
    base = make_fgvc_set(data_dir, "CUB_200_2011", "images", 2)
    (base / "val.json").write_text("{not json")
    with pytest.raises(DataError, match="val.json is not valid JSON"):
        task_for(tmp_path, data_dir, "dataset=fgvc/cub", "dataset.num_classes=2")


def test_geometry_centre_crop_keeps_aspect():
    from PIL import Image

    image = Image.fromarray(np.zeros((40, 80, 3), dtype=np.uint8))
    out = Geometry(32, "bicubic", 0.875).apply(image)
    assert out.size == (32, 32)
    assert json.dumps(Geometry(32).describe())


def test_a_split_stays_on_the_gpu_while_it_takes_at_most_a_quarter_of_its_free_memory(monkeypatch):
    from data.loader import fits_on_device

    gib = 1 << 30
    free = {"now": 141 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["now"], 141 * gib))
    gpu, dsprites_test = torch.device("cuda", 0), 73_728 * 3 * 224 * 224  # 11.1 GB of uint8 at 224²
    assert fits_on_device(dsprites_test, gpu)
    free["now"] = 40 * gib  # others share the GPU: a quarter of what is free is 10 GiB
    assert not fits_on_device(dsprites_test, gpu) and fits_on_device(4 * gib, gpu)
    free["now"] = 0
    assert fits_on_device(4 * gib, gpu) and not fits_on_device(4 * gib + 1, gpu)
    assert fits_on_device(100 * gib, torch.device("cpu"))
