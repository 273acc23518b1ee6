"""HST: the side network's shapes and count at ViT-B/16, what trains, the meta tokens, the exact bridge order."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from methods import create_method
from methods.hst import MetaToken, SideTuned
from tests.method_table import Case

NOT_VIT = "hst is defined on a timm VisionTransformer, not"

CASES = [
    Case(("method=hst",), vit_b16=764_840, tiny=258_904, disables=False,
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
]


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                             num_classes=10, **kwargs)


def test_stage_outputs_and_count_at_vit_b16_on_the_meta_device():
    with torch.device("meta"):
        model = create_method("hst").attach(timm.create_model("vit_base_patch16_224", num_classes=100))
        stages = model.forward_stages(torch.zeros(2, 3, 224, 224))
        logits = model(torch.zeros(2, 3, 224, 224))
    assert [tuple(s.shape) for s in stages] == [(2, 32, 56, 56), (2, 48, 28, 28), (2, 64, 14, 14), (2, 72, 7, 7)]
    assert tuple(logits.shape) == (2, 100)
    assert sum(p.numel() for p in model.get_classifier().parameters()) == 73 * 100
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 764_840 + 7_300


def test_only_the_side_network_meta_tokens_and_vit_layernorms_train():
    model = create_method("hst").attach(tiny_vit(drop_path_rate=0.1))
    assert isinstance(model, SideTuned) and all(isinstance(b, MetaToken) for b in model.base.blocks)
    model.train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    vit = {n: p for n, p in model.base.named_parameters()}
    for name, p in vit.items():
        trains = name.endswith(("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "hst_meta"))
        assert (p.grad is not None and p.grad.abs().sum() > 0) == trains, name
    assert model.get_classifier() is model.hst_head and not any(p.requires_grad for p in model.base.norm.parameters())


def test_meta_token_enters_before_cls_and_leaves_after_the_block():
    model = create_method("hst").attach(tiny_vit()).eval()
    seen = []
    model.base.blocks[1].base.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert seen[0].shape == (2, 1 + 1 + 16, 64)
    assert torch.equal(seen[0][:, 0], model.base.blocks[1].hst_meta[0].expand(2, -1))


def test_projecting_before_resizing_is_the_codes_order_exactly():
    """T(resize(F)) = resize(T(F)) for an affine T and bilinear weights summing to 1 (the code resizes 768 channels)."""
    bridge = torch.nn.Linear(64, 8)
    maps = torch.randn(2, 64, 14, 14)
    for size in (56, 28, 14, 7):
        code = bridge(F.interpolate(maps, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1))
        ours = F.interpolate(F.conv2d(maps, bridge.weight[..., None, None], bridge.bias), size=size, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
        assert torch.allclose(code, ours, atol=1e-5), size


def test_layernorm_epsilons_are_the_codes():
    model = create_method("hst").attach(tiny_vit())
    assert model.hst_stem.norm.eps == 1e-5 and all(d.norm.eps == 1e-5 for d in model.hst_down)
    assert all(n.eps == 1e-5 for n in model.hst_meta_norms)
    assert all(b.norm1.eps == b.norm2.eps == 1e-6 for b in model.hst_blocks)
    assert all(n.eps == 1e-6 for n in model.hst_stage_norms) and model.hst_head_norm.eps == 1e-6
    assert not model.hst_head_norm.affine and model.hst_stem.conv[1].eps == 1e-5
