"""SCT: the class-aware channel selection finds the channels the classes live in; the module; count; the plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from methods import MethodError, create_method
from methods.sct import SCT, SalientChannels
from runners import run
from tests.method_table import Case, D, L

K = D // 8
NOT_VIT = "sct is defined on a timm VisionTransformer, not"

CASES = [
    Case(("method=sct",), vit_b16=111_744, tiny=L * (K * K + K),  # 12·(96·96 + 96)
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
    Case(("method=sct", "method.position=mlp", "method.topk=4"), tiny=L * (4 * 4 + 4)),
]


class Images:
    """A data pass over fixed images and labels."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int):
        self.x, self.y, self.num_classes, self.images = x, y, num_classes, len(y)

    def __call__(self, batch_size: int, max_batches: int | None = None):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


def residual_is_the_patch_embedding(model) -> None:
    """Zero every attention and MLP output, so each block passes the patch embedding through unchanged."""
    with torch.no_grad():
        for block in model.blocks:
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        model.pos_embed.zero_()


def two_colour_task(n: int = 40):
    """Class 0: red images, class 1: green ones, with noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = 0.05 * torch.randn(n, 3, 32, 32, generator=g)
    x[y == 0, 0] += 1.0
    x[y == 1, 1] += 1.0
    return Images(x, y, 2)


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=2).eval()


def test_selection_finds_the_channels_the_classes_differ_in():
    model = tiny_vit()
    residual_is_the_patch_embedding(model)
    with torch.no_grad():  # channel 5 carries the red input, channel 9 the green one; the rest is faint noise
        w = model.patch_embed.proj.weight
        w.mul_(0.01)
        w[5, 0] = 1.0
        w[9, 1] = 1.0
        model.patch_embed.proj.bias.zero_()
    method = create_method("sct", topk=2)
    method.attach(model)
    plan = method.prepare(model, two_colour_task(), lambda logits, y: logits.sum())
    assert plan["channels"] == [[5, 9]] * 3
    assert all(isinstance(b, SalientChannels) for b in model.blocks)
    assert [b.sct.sct_channels.tolist() for b in model.blocks] == [[5, 9]] * 3


def test_selection_is_the_class_aware_score_and_deterministic():
    """a_cj = ‖X_c[:, :, j]‖₂ over images × patch tokens, averaged over the classes present, top K ascending."""
    model, data = tiny_vit(), two_colour_task()
    features = []
    model.blocks[1].norm2.register_forward_pre_hook(lambda m, a: features.append(a[0][:, 1:]))
    with torch.no_grad():
        model(data.x)
    x = features[0]
    scores = torch.stack([x[data.y == c].norm(p=2, dim=(0, 1)) for c in (0, 1)]).mean(0)
    expected = sorted(torch.topk(scores, 8).indices.tolist())
    method = create_method("sct")
    method.attach(model)
    first = method.prepare(model, data, None)["channels"]
    assert first[1] == expected
    again, other = tiny_vit(), create_method("sct")
    other.attach(again)
    assert other.prepare(again, data, None)["channels"] == first


def test_module_updates_only_the_selected_channels_after_the_attention_add():
    model = tiny_vit()
    method = create_method("sct", topk=4)
    method.attach(model)
    method.attach(model, {"position": "attn", "topk": 4, "channels": [[1, 2, 3, 60]] * 3})
    wrapper = model.blocks[0]
    with torch.no_grad():
        wrapper.sct.sct_linear.weight.normal_()
        tokens = torch.randn(2, 17, 64)
        block = wrapper.base
        h = tokens + block.attn(block.norm1(tokens))
        updated = h.clone()
        updated[..., [1, 2, 3, 60]] += wrapper.sct.sct_linear(h[..., [1, 2, 3, 60]])
        expected = updated + block.mlp(block.norm2(updated))
        assert torch.allclose(wrapper(tokens), expected, atol=1e-5)
    assert wrapper.sct.sct_linear.bias.abs().sum() == 0


def test_bad_topk_and_foreign_plans_are_one_line():
    model = tiny_vit()
    with pytest.raises(MethodError, match="method.topk=65 exceeds the 64 channels"):
        SCT(topk=65).attach(model, {"position": "attn", "topk": 65, "channels": [[0]] * 3})
    with pytest.raises(MethodError, match="was made for another model"):
        SCT().attach(tiny_vit(), {"position": "attn", "topk": 8, "channels": [list(range(8))] * 12})


def test_a_resumed_run_reuses_the_plan_without_a_data_pass(tiny_cfg, monkeypatch):
    from runners.trainer import Trainer

    calls = []
    prepare, save = SCT.prepare, Trainer._save_checkpoint
    monkeypatch.setattr(SCT, "prepare", lambda self, *a: calls.append(1) or prepare(self, *a))

    def save_then_stop(self, epoch, *args):
        save(self, epoch, *args)
        raise InterruptedError

    cfg = tiny_cfg("method=sct", "epochs=2")
    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(InterruptedError):
        run(cfg)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    metrics = run(cfg)
    assert len(calls) == 1 and metrics["params"]["trainable_without_head"] == L * (K * K + K)
    assert (Path(cfg.paths.run_dir) / "plan.json").exists()
