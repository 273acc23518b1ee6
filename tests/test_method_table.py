"""The shared checks every method case goes through (rows: `CASES` of each `tests/test_method_<name>.py`).

forward and trainable set · identity at init where the paper says so · save → load round trip with identical
logits · merge equals unmerged within 1e-5 (or a one-line refusal) · disabled equals the backbone · exact
ViT-B/16 count on the meta device · other backbones · two epochs on digits through the runner.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from methods import MethodError, list_methods
from methods.base import head_state_keys
from methods.tuners import Tuner, tuner_state, tuners
from runners import compose, run
from runners.backbone import build_backbone
from runners.config import CONF_DIR
from runners.io import save_safetensors
from runners.job import build_adaptation, load_run
from runners.report import count_params
from runners.trainer import task_loss
from tests.conftest import TINY
from tests.method_table import Case, collect

CASES = collect()
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CLASSES = 10
VIT_B16_BACKBONE = 85_798_656


class RandomPass:
    """A data pass of generated images, for methods with a data-dependent step."""

    num_classes, images = CLASSES, 40

    def __call__(self, batch_size: int, max_batches: int | None = None):
        g = torch.Generator().manual_seed(7)
        for _ in range(self.images // batch_size if max_batches is None else max_batches):
            yield torch.randn(batch_size, 3, 32, 32, generator=g), torch.arange(batch_size) % CLASSES


def config(case: Case, *extra: str):
    return compose(["backbone=vit_test", "dataset=digits", "logger=none", *case.overrides, *extra])


def plain(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(cfg.backbone, CLASSES).eval()


def plain_like(cfg, model: torch.nn.Module) -> torch.nn.Module:
    """The plain backbone with the adapted model's head (a method may initialise its head its own way; a side
    network's head has another shape and is left alone)."""
    reference = plain(cfg)
    head, theirs = reference.get_classifier(), model.get_classifier()
    if head.weight.shape == theirs.weight.shape:
        with torch.no_grad():
            head.weight.copy_(theirs.weight)  # as computed (a quantised head's effective weight)
            head.bias.copy_(theirs.bias if theirs.bias is not None else torch.zeros_like(head.bias))
    return reference


def adapted(case: Case, plan: dict | None = None):
    """(cfg, model, adaptation, plan) on the tiny ViT, the backbone and head as `plain(cfg)`'s."""
    cfg = config(case)
    model = plain(cfg)
    adaptation = build_adaptation(cfg)
    model, plan = adaptation.build(model, plan, None if plan else RandomPass(), task_loss(0.0))
    return cfg, model.eval(), adaptation, plan


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def perturb_(model: torch.nn.Module, tuners_only: bool) -> None:
    """Move the method's tensors away from their init, so that equalities below mean something."""
    names = set(tuner_state(model))
    if not tuners_only:
        names |= {n for n, p in model.named_parameters() if p.requires_grad} - head_state_keys(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names and p.is_floating_point():
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_every_method_has_a_config_and_a_case():
    configs = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert configs == set(list_methods())
    assert {config(c).method.name for c in CASES} == set(list_methods())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_trainable_set_and_prefix(case):
    cfg, model, adaptation, _ = adapted(case)
    out = logits(model)
    assert out.shape == (3, CLASSES) and torch.isfinite(out).all()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = adaptation.state(model)
    assert head_state_keys(model) <= trainable <= set(state)
    if case.tiny is not None:
        assert count_params(model).trainable_without_head == case.tiny
    prefix = adaptation.method.prefix
    for name, tuner in tuners(model):
        for key, _ in tuner.named_parameters():
            if not key.startswith("base."):
                assert re.search(rf"(^|\.){re.escape(prefix)}", key), (name, key, prefix)

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    task_loss(0.0)(model(X), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert changed - head_state_keys(model) or case.tiny == 0, "only the head moved"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_identity_at_init_where_the_paper_says_so(case):
    cfg, model, _, _ = adapted(case)
    difference = (logits(model) - logits(plain_like(cfg, model))).abs().max().item()
    assert (difference < 1e-6) == case.identity_at_init, difference


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_save_load_round_trip_gives_identical_logits(case, tmp_path):
    cfg, model, adaptation, plan = adapted(case)
    perturb_(model, tuners_only=False)
    expected = logits(model)
    save_safetensors(tmp_path / "t.safetensors", adaptation.stored(model), metadata={"plan": json.dumps(plan)})

    _, rebuilt, again, _ = adapted(case, plan=plan)
    state = again.restored(rebuilt, load_file(tmp_path / "t.safetensors"))
    result = rebuilt.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not set(again.state(rebuilt)) - set(state)
    assert torch.equal(logits(rebuilt), expected)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_merge_equals_unmerged_or_says_why(case):
    cfg, model, adaptation, _ = adapted(case)
    perturb_(model, tuners_only=False)
    if not case.merges:
        assert not adaptation.mergeable(model)
        with pytest.raises(MethodError, match="has no re-parameterised"):
            adaptation.merge(model)
        return
    before = logits(model)
    merged = adaptation.merge(copy.deepcopy(model))
    assert not any(isinstance(m, Tuner) for m in merged.modules())
    assert (logits(merged) - before).abs().max().item() < 1e-5
    reference = plain(cfg)
    reference.load_state_dict(merged.state_dict(), strict=True)  # a plain timm model: same keys and shapes
    assert (logits(reference) - before).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", [c for c in CASES if c.disables], ids=[c.id for c in CASES if c.disables])
def test_disabled_and_detached_equal_the_backbone(case):
    cfg, model, adaptation, _ = adapted(case)
    perturb_(model, tuners_only=True)
    base = logits(plain_like(cfg, model))
    adapted_logits = logits(model)
    adaptation.method.disable(model)
    assert torch.allclose(logits(model), base, atol=1e-6)
    adaptation.method.enable(model)
    assert torch.equal(logits(model), adapted_logits)
    model = adaptation.method.detach(model)
    assert not tuners(model) and torch.allclose(logits(model), base, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c.vit_b16 is not None],
                         ids=[c.id for c in CASES if c.vit_b16 is not None])
def test_vit_b16_count_on_the_meta_device(case):
    cfg = compose(["backbone=vit_b16_in21k", "dataset=digits", *case.overrides])
    adaptation = build_adaptation(cfg)
    with torch.device("meta"):
        model = build_backbone(cfg.backbone, 100, load_weights=False)
        model, _ = adaptation.build(model, adaptation.method.nominal_plan(model))
    counts = count_params(model)
    head = {id(p): p.numel() for p in model.get_classifier().parameters()}
    inserted = {id(p): p.numel() for _, t in tuners(model) for k, p in t.named_parameters()
                if not k.startswith("base.")}
    assert counts.trainable_without_head == case.vit_b16
    assert counts.trainable_with_head == case.vit_b16 + sum(head.values())
    outside = sum(n for i, n in head.items() if i not in inserted)  # a side network's head is one of its modules
    assert counts.total == VIT_B16_BACKBONE + sum(inserted.values()) + outside


BACKBONES = {
    "swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16,
                                      depths=(1, 1), num_heads=(1, 2), num_classes=CLASSES),
    "convnext": lambda: timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                          num_classes=CLASSES),
}
ON_OTHER_BACKBONES = [(c, b) for c in CASES for b in c.backbones]


@pytest.mark.parametrize("case, backbone", ON_OTHER_BACKBONES, ids=[f"{c.id} {b}" for c, b in ON_OTHER_BACKBONES])
def test_other_backbones_train_a_step_or_say_why(case, backbone):
    model = BACKBONES[backbone]()
    adaptation = build_adaptation(config(case))
    error = case.backbones[backbone]
    if error:
        with pytest.raises(MethodError, match=re.escape(error)):
            adaptation.build(model, None, RandomPass(), task_loss(0.0))
        return
    model, _ = adaptation.build(model, None, RandomPass(), task_loss(0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    task_loss(0.0)(model.train()(X), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))


FIELDS = {"task", "benchmark", "group", "method", "method_label", "backbone", "seed", "protocol", "top1", "params",
          "stored_bytes", "stored_tensor_bytes", "gmacs_per_image", "peak_memory_mib", "train_images_per_s",
          "wall_seconds", "provenance"}
PROVENANCE = {"data_format", "normalisation", "interpolation", "selection", "weights", "config_hash", "git_commit",
              "versions", "train_split", "eval_split", "gmacs", "techniques", "evaluated"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_two_epochs_on_digits_through_the_runner(case, tmp_path):
    cfg = compose([*TINY, f"paths.runs={tmp_path / 'runs'}", *case.overrides])
    metrics = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert run_dir.relative_to(cfg.paths.runs).parts[:4] == ("digits", "digits", metrics["method_label"], "vit_test")
    assert run_dir.name == "seed42"
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["top1"] == metrics["top1"] and 0.0 <= on_disk["top1"] <= 100.0
    assert FIELDS <= on_disk.keys() and PROVENANCE <= on_disk["provenance"].keys()
    assert on_disk["protocol"] == "final" and on_disk["provenance"]["eval_split"] == "test"
    assert on_disk["provenance"]["train_images"] == 1000 and on_disk["provenance"]["eval_images"] == 797
    assert on_disk["provenance"]["evaluated"] == ("merged" if case.merges else "as trained")
    assert on_disk["provenance"]["gmacs"]["images"] == 256 and on_disk["gmacs_per_image"] > 0
    params = on_disk["params"]
    _, model, adaptation = load_run(run_dir)  # rebuilt from config and plan, no data read
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert params["trainable_with_head"] == params["trainable_without_head"] + head
    if case.tiny is not None:
        assert params["trainable_without_head"] == case.tiny
    assert on_disk["stored_bytes"] == (run_dir / "trainable.safetensors").stat().st_size
    assert not (run_dir / "checkpoint.pt").exists() and (run_dir / "plan.json").exists()
    assert on_disk["train_images_per_s"] > 0

    stored = load_file(run_dir / "trainable.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if any(k.endswith(".bits") for k in stored):  # quantised modules are stored as bits: far fewer bytes
        assert on_disk["stored_tensor_bytes"] < 4 * params["trainable_with_head"] / 4
    else:
        assert sum(stored[k].numel() for k in trainable if k in stored) == params["trainable_with_head"]
