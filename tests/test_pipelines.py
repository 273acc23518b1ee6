"""The papers' data pipelines: the same transforms as timm/torchvision with the same seed, per sample and
deterministic, on-device erasing and mixup, TF 1's bilinear resize, and the pipeline named in the provenance."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, rand_augment_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from data.cache import Geometry, tf_bilinear
from data.loader import AugmentedLoader, MixupCutmix, RandomErase
from data.task import Split
from data.transforms import SeededRNG, build_train_transform, pillow_safe
from runners import compose, run

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
MEAN = (0.485, 0.456, 0.406)


def seeded(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("pipeline", ["fgvc_vpt", "fgvc_ssf", "fgvc_simpleaug", "fewshot_noah",
                                      "vtab_noah_randaugment"])
def test_host_transforms_are_timms_and_torchvisions(pipeline):
    spec = dict(compose([f"pipeline={pipeline}"]).pipeline.train)
    ours = build_train_transform(spec, 32, MEAN)
    if pipeline == "fgvc_vpt":
        reference = T.Compose([T.RandomCrop(32), T.RandomHorizontalFlip(0.5)])
    elif pipeline == "vtab_noah_randaugment":
        hparams = {"translate_const": int(32 * 0.45), "img_mean": tuple(round(255 * m) for m in MEAN)}
        reference = T.Compose([T.RandomHorizontalFlip(0.5), rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)])
    elif pipeline in ("fgvc_ssf", "fgvc_simpleaug"):  # SSF's transforms_simpleaug_train: no colour jitter
        reference = T.Compose([RandomResizedCropAndInterpolation(32, tuple(spec.get("scale", (0.08, 1.0))),
                                                                 tuple(spec.get("ratio", (3 / 4, 4 / 3))),
                                                                 spec["interpolation"]), T.RandomHorizontalFlip(0.5)])
    else:
        primary, secondary, _ = create_transform(32, is_training=True, auto_augment=spec.get("randaugment"),
                                                 interpolation=spec["interpolation"], mean=MEAN, re_prob=0.0,
                                                 separate=True)
        reference = T.Compose([*primary.transforms, *secondary.transforms])
    reference = pillow_safe(reference)  # 0-bit posterize as Pillow < 11 did, in both
    for seed in range(6):
        seeded(seed)
        a = ours(IMAGE)
        seeded(seed)
        assert same(a, reference(IMAGE)), (pipeline, seed)
    seeded(0)
    first = ours(IMAGE)
    assert any(not same(first, ours(IMAGE)) for _ in range(5))  # it does augment


def test_zero_bit_posterize_is_the_black_image_not_an_error():
    from data.transforms import _posterize

    assert not np.asarray(_posterize(IMAGE, 0)).any() and same(_posterize(IMAGE, 8), IMAGE)
    assert np.asarray(_posterize(IMAGE, 1)).max() == 128


def test_augmentation_is_per_sample_and_deterministic_for_a_seed():
    images = torch.from_numpy(np.array(IMAGE)).permute(2, 0, 1).expand(8, -1, -1, -1).contiguous()
    split = Split("train", images, torch.arange(8) % 2)
    transform = build_train_transform({"kind": "random_resized_crop", "interpolation": "bicubic"}, 24, MEAN)

    def epoch(seed, n):
        loader = AugmentedLoader(split, 4, torch.device("cpu"), MEAN, (0.2, 0.2, 0.2), transform, seed=seed)
        loader.set_epoch(n)
        return torch.cat([x for x, _ in loader])

    a = epoch(0, 0)
    assert a.shape == (8, 3, 24, 24)
    assert not torch.equal(a[0], a[1])  # the same image, two samples: two crops
    assert torch.equal(a, epoch(0, 0)) and not torch.equal(a, epoch(0, 1)) and not torch.equal(a, epoch(1, 0))
    state = random.getstate()
    with SeededRNG(5):
        random.random()
    assert random.getstate() == state  # augmenting leaves the training process's random streams alone


def test_random_erasing_and_mixup_act_per_sample_on_the_device():
    x = torch.zeros(8, 3, 16, 16)
    y = torch.arange(8) % 4
    random.seed(0)
    torch.manual_seed(0)
    erased, same_y = RandomErase(1.0, torch.device("cpu"))(x.clone(), y)
    assert torch.equal(same_y, y) and all(erased[i].abs().sum() > 0 for i in range(8))
    masks = [(erased[i] != 0).any(0) for i in range(8)]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])  # each image its own box
    np.random.seed(0)
    mixed, soft = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                              label_smoothing=0.1)(torch.randn(8, 3, 16, 16), y)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8)) and soft.max() < 1.0


def test_tf1_bilinear_resize():
    """TF 1's resize samples source = destination · in/out; checked against TensorFlow where it is installed."""
    pixels = np.asarray(IMAGE)
    ours = np.asarray(tf_bilinear(IMAGE, 20, 16)).astype(np.float32)
    assert ours[0, 0].tolist() == pixels[0, 0].tolist()  # destination 0 samples source 0 exactly
    y, x = 1, 1
    sy, sx = y * 48 / 16, x * 64 / 20  # 3.0, 3.2
    expected = pixels[3, 3] * 0.8 + pixels[3, 4] * 0.2
    assert np.allclose(ours[y, x], np.round(expected), atol=0.51)
    tf = pytest.importorskip("tensorflow")
    reference = tf.compat.v1.image.resize_bilinear(pixels[None].astype(np.float32), (16, 20), align_corners=False,
                                                   half_pixel_centers=False).numpy()[0]
    assert np.abs(ours - np.round(reference)).max() <= 1
    assert Geometry(16, "tf_bilinear").describe() == "resize to 16x16 (tf_bilinear)"
    assert sy == 3.0 and sx == pytest.approx(3.2)


def test_the_run_names_its_pipeline(tiny_cfg):
    from runners.trainer import task_loss

    metrics = run(tiny_cfg("method=linear", "epochs=1", "pipeline=vtab_noah_randaugment"))
    pipeline = metrics["provenance"]["pipeline"]
    assert pipeline["name"] == "vtab_noah_randaugment" and pipeline["train"]["randaugment"] == "rand-m9-mstd0.5-inc1"
    assert metrics["provenance"]["normalisation"]["name"] == "imagenet"
    assert "RandAugment" in metrics["provenance"]["train_preprocessing"]
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(task_loss(0.0)(logits, soft), -(soft * logits.log_softmax(-1)).sum(-1).mean())


def test_ssf_fgvc_pipeline_trains_with_ema_and_mixup(tmp_path, tiny_cfg):
    from tests.datasets import make_fgvc_set

    data = tmp_path / "data"
    make_fgvc_set(data, "CUB_200_2011", "images", 4)
    metrics = run(tiny_cfg("method=lora", "dataset=fgvc/cub", "dataset.num_classes=4", "pipeline=fgvc_ssf",
                           "pipeline.source_size=40", "pipeline.ema=0.9", f"paths.data_dir={data}",
                           f"paths.cache_dir={tmp_path / 'cache'}", "batch_size=8", "data.augment_workers=0"))
    assert metrics["provenance"]["pipeline"]["mixup"]["cutmix_alpha"] == 1.0
    assert metrics["provenance"]["train_split"] == "train+val" and 0 <= metrics["top1"] <= 100
