"""SPT: the allocation against a hand-computed case, the sensitivity, unstructured δ, q/k/v row blocks, counts."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from methods import MethodError, create_method
from methods.spt import SPTLinear, allocate, ranked_tensors
from runners.report import count_params
from tests.method_table import Case

TINY_BUDGET = ("method.budget=0.01", "method.scan_step=0.0005", "method.scan_max=0.05")
NOT_VIT = "spt is defined on a timm VisionTransformer, not"

CASES = [
    Case(("method=spt", *TINY_BUDGET), merges=True,
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
    Case(("method=spt", *TINY_BUDGET, "method.init=paper"), merges=True, identity_at_init=True),
    Case(("method=spt", "method.variant=adapter", *TINY_BUDGET)),
    Case(("method=spt", "method.variant=adapter", *TINY_BUDGET, "method.init=paper"), identity_at_init=True),
]


def scores_with(top: dict[str, list[int]], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Scores that are 1 + a small rank at the given flat entries and tiny elsewhere."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in shapes.items():
        t = 1e-6 * torch.rand(shape, generator=g)
        for j in top.get(name, []):
            t.view(-1)[j] = 1.0 + 0.01 * j
        out[name] = t
    return out


def test_allocation_matches_a_hand_computed_case():
    shapes = {"blocks.0.norm1.weight": (8,), "blocks.0.attn.q.weight": (8, 8), "blocks.0.attn.q.bias": (8,),
              "blocks.0.mlp.fc1.weight": (32, 8)}
    top = {"blocks.0.attn.q.weight": [0, 9, 18, 27, 36],  # 5 ≥ P/α = 2·(8+8)/10 = 3.2: structured, P = 32
           "blocks.0.mlp.fc1.weight": [3, 40, 77, 200],  # 4 < 2·(8+32)/10 = 8: 4 unstructured entries
           "blocks.0.norm1.weight": [1, 2, 5],  # 3 ≥ 8/β = 1.6: the whole vector, 8
           "blocks.0.attn.q.bias": [6]}  # 1 < 1.6: one unstructured entry
    k = 13
    assert math.ceil(13e-6 * 1e6) == k
    plan = allocate(scores_with(top, shapes), budget=49e-6, variant="lora", rank=2, cls_params=4, scan_step=13e-6,
                    scan_max=13e-6)
    assert plan["entries"] == 13
    assert plan["structured"] == ["blocks.0.attn.q.weight"]
    assert plan["vectors"] == ["blocks.0.norm1.weight"]
    assert plan["unstructured"] == {"blocks.0.mlp.fc1.weight": [3, 40, 77, 200], "blocks.0.attn.q.bias": [6]}
    assert plan["nominal"] == 32 + 8 + 4 + 1 + 4  # structured + vector + unstructured + CLS


def test_allocation_scans_tau_for_the_closest_count_and_refuses_an_impossible_budget():
    shapes = {"blocks.0.attn.q.weight": (8, 8), "blocks.0.mlp.fc1.weight": (32, 8)}
    scores = scores_with({"blocks.0.attn.q.weight": list(range(10))}, shapes)
    plan = allocate(scores, budget=40e-6, variant="lora", rank=2, cls_params=0, scan_step=1e-6, scan_max=30e-6)
    # τ = 1, 2: unstructured 1, 2; τ ≥ 4 makes q structured (32), so its count jumps; 40 is reached by 32 + fc1's 8
    assert plan["nominal"] in (39, 40, 41) and plan["structured"] == ["blocks.0.attn.q.weight"]
    with pytest.raises(MethodError, match="cannot be met"):
        allocate(scores, budget=1.0, variant="lora", rank=2, cls_params=0, scan_step=1e-6, scan_max=30e-6)


def tiny_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                             num_classes=5, **kwargs)


class Batches:
    num_classes, images = 5, 16

    def __call__(self, batch_size, max_batches=None):
        g = torch.Generator().manual_seed(1)
        for _ in range(max_batches):
            yield torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 5, (batch_size,), generator=g)


def test_sensitivity_is_the_sum_of_squared_batch_gradients():
    model = tiny_vit()
    method = create_method("spt", budget=0.01, sensitivity_batches=2, sensitivity_batch_size=4)
    method.attach(model)
    scores = method.sensitivity(model, Batches(), nn.functional.cross_entropy)
    assert set(scores) == set(ranked_tensors(model)) and len(scores) == 2 * 16 + 2

    reference = tiny_vit()
    expected = torch.zeros(64, 64)
    for x, y in Batches()(4, 2):
        reference.zero_grad()
        nn.functional.cross_entropy(reference.train()(x), y).backward()
        expected += reference.blocks[1].attn.qkv.weight.grad[64:128].square()  # k's row block
    assert torch.allclose(scores["blocks.1.attn.k.weight"], expected, rtol=1e-5, atol=1e-12)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "head" not in n and "cls" not in n)


def test_unstructured_deltas_change_only_the_selected_entries():
    layer = SPTLinear(nn.Linear(4, 6).requires_grad_(False), weight_index=[1, 7, 22], bias_index=[5], slices=[],
                      variant="lora", mode="parallel", rank=2, init="code")
    before = layer.base.weight.detach().clone()
    optimizer = torch.optim.SGD([p for n, p in layer.named_parameters() if n.startswith("spt_")], lr=1.0)
    layer(torch.randn(3, 4)).square().sum().backward()
    optimizer.step()
    weight, bias = layer.effective()
    changed = (weight - before).flatten().nonzero().flatten().tolist()
    assert changed == [1, 7, 22]
    assert (bias - layer.base.bias).nonzero().flatten().tolist() == [5]
    assert layer.base.weight.grad is None  # the frozen weight itself never moves


def test_branches_sit_on_their_qkv_row_block():
    model = tiny_vit()
    method = create_method("spt", budget=0.01)
    method.attach(model)
    plan = {"variant": "lora", "rank": 8, "structured": ["blocks.0.attn.k.weight"], "vectors": [], "unstructured": {},
            "nominal": 0}
    method.attach(model, plan)
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, SPTLinear) and qkv.slices == [("k", 64, 128)]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        delta = qkv.eval()(x) - qkv.base(x)
    assert delta[..., 64:128].abs().max() > 0 and not delta[..., :64].any() and not delta[..., 128:].any()


@pytest.mark.parametrize("norm_entries, untuned", [("count", 3), ("tune", 0)])
def test_realised_count_is_the_budget_arithmetic(norm_entries, untuned):
    """The code counts LayerNorm entries it never tunes: vpeft counts them too by default, and says so."""
    model = tiny_vit()
    method = create_method("spt", budget=0.01, norm_entries=norm_entries)
    method.attach(model)
    plan = {"variant": "lora", "rank": 8, "nominal": 8 * (64 + 256) + 64 + 2 + 3 + 64,
            "structured": ["blocks.1.mlp.fc1.weight"], "vectors": ["blocks.0.norm2.bias"],
            "unstructured": {"blocks.0.attn.proj.weight": [5, 70], "blocks.1.norm1.weight": [0, 1, 2]}}
    method.attach(model, plan)
    report = method.report(model)
    assert report["nominal_params"] == plan["nominal"]
    assert report["norm_entries_counted_not_tuned"] == untuned
    assert count_params(model).trainable_without_head == report["realised_params"] == plan["nominal"] - untuned


def test_plans_of_another_model_are_refused():
    method = create_method("spt", budget=0.01)
    model = tiny_vit()
    with pytest.raises(MethodError, match="another model"):
        method.attach(model, {"variant": "lora", "rank": 8, "structured": ["blocks.11.mlp.fc1.weight"], "vectors": [],
                              "unstructured": {}})
