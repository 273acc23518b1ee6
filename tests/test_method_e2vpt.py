"""E2VPT: key-value prompts in attention, the masks and their importance, rewinding, counts before/after pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from methods import MethodError, create_method
from methods.e2vpt import KVPromptAttention, PromptedBlocks, candidates
from runners import run
from tests.conftest import run_cli
from tests.method_table import Case, D, L

H, HEAD_DIM = 4, 16
VISUAL, KV = L * 10 * D, L * H * 5 * HEAD_DIM
NOT_VIT = "e2vpt needs a timm VisionTransformer with a CLS token, not"

CASES = [
    Case(("method=e2vpt",), vit_b16=9_216 * (10 + 5), tiny=VISUAL + KV,
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
    Case(("method=e2vpt", "method.stage=search"), vit_b16=9_216 * 15 + 10 + 10 * 16, tiny=VISUAL + KV + 10 + 160),
    Case(("method=e2vpt", "method.share_kv=false", "method.kv_tokens=1"), tiny=VISUAL + 2 * L * H * HEAD_DIM),
]


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=5)


@pytest.mark.parametrize("fused", [True, False])
def test_zero_length_kv_prompts_are_timms_attention_exactly(fused):
    attention = tiny_vit().blocks[0].attn.eval()
    attention.fused_attn = fused
    x = torch.randn(2, 17, 64)
    wrapped = KVPromptAttention(attention, length=0, share_kv=True)
    with torch.no_grad():
        assert torch.equal(wrapped(x), attention(x))


def test_kv_prompts_are_prepended_to_keys_and_values_per_head():
    attention = tiny_vit().blocks[0].attn.eval()
    wrapped = KVPromptAttention(attention, length=3, share_kv=True)
    assert wrapped.e2vpt_kv.abs().max() <= (6 / (3 * HEAD_DIM)) ** 0.5  # kaiming_uniform_ on (H, N_kv, d_h)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        q, k, v = attention.qkv(x).reshape(2, 17, 3, H, HEAD_DIM).permute(2, 0, 3, 1, 4)
        p = wrapped.e2vpt_kv.expand(2, -1, -1, -1)
        k, v = torch.cat([p, k], 2), torch.cat([p, v], 2)
        weights = (q @ k.transpose(-2, -1) / HEAD_DIM**0.5).softmax(-1)
        expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 17, 64))
        assert torch.allclose(wrapped(x), expected, atol=1e-5)


def test_candidate_grid_is_the_codes():
    segments = [1, 3, 4, 6, 8, 9, 11, 12]
    assert candidates(10) == (list(range(1, 10)), segments)
    assert candidates(5) == ([0, 1, 2, 3, 4], segments)
    assert candidates(32) == ([3, 6, 9, 12, 16, 19, 22, 25, 28], segments)
    assert candidates(1) == ([0], segments)


def test_masks_are_shared_and_segments_strided():
    model = tiny_vit()
    create_method("e2vpt", stage="search").attach(model)
    blocks = model.blocks
    assert isinstance(blocks, PromptedBlocks) and len(list(blocks)) == 3
    with torch.no_grad():
        blocks.e2vpt_segment_mask.uniform_()
        blocks.e2vpt_token_mask.uniform_()
    mask = blocks.mask()
    d = torch.arange(64)
    assert torch.equal(mask, blocks.e2vpt_segment_mask[:, d % 16] * blocks.e2vpt_token_mask[:, None])


class SearchPlan:
    """A stand-in for a finished search run's plan."""

    def __init__(self, tokens, segments):
        self.source = {"stage": "search", "importance": "signed", "token_scores": tokens, "segment_scores": segments}

    def plan(self):
        return self.source, {"method": "e2vpt", "where": "search-run", "config_hash": "abc"}


def rewound(prune_tokens=3, prune_segments=4):
    g = torch.Generator().manual_seed(0)
    tokens, segments = torch.randn(10, generator=g), torch.randn(10, 16, generator=g)
    method = create_method("e2vpt", stage="rewind", search_run="search-run", prune_tokens=prune_tokens,
                           prune_segments=prune_segments)
    method.search = SearchPlan(tokens.tolist(), segments.tolist())
    model = tiny_vit()
    method.attach(model)
    plan = method.prepare(model, None, None)
    return method, model, plan, tokens, segments


def test_rewind_prunes_the_lowest_scores_and_starts_fresh():
    method, model, plan, tokens, segments = rewound()
    token_mask = torch.tensor(plan["token_mask"])
    assert set(torch.nonzero(token_mask == 0).flatten().tolist()) == set(tokens.argsort()[:3].tolist())
    segment_mask = torch.tensor(plan["segment_mask"])
    for k in range(10):
        assert set(torch.nonzero(segment_mask[k] == 0).flatten().tolist()) == set(segments[k].argsort()[:4].tolist())
    blocks = model.blocks
    assert not blocks.e2vpt_token_mask.requires_grad and "e2vpt_token_mask" in dict(blocks.named_buffers())
    pruned = blocks.mask() == 0
    assert (blocks.e2vpt_prompts[:, pruned] == 0).all() and (blocks.e2vpt_prompts[:, ~pruned] != 0).all()
    report = method.report(model)
    assert report["params_before_pruning"] == 3 * 10 * 64 + 3 * H * 5 * HEAD_DIM
    assert report["params_surviving"] == 3 * int((~pruned).sum()) + 3 * H * 5 * HEAD_DIM
    assert int((~pruned).sum()) == 7 * 12 * 4  # 7 tokens × 12 segments × 4 dims each


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_entries_stay_exactly_zero_through_training(optimizer):
    _, model, _, _, _ = rewound()
    blocks = model.blocks
    pruned = blocks.mask() == 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-3) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=0.05, weight_decay=0.1))
    model.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    assert (blocks.e2vpt_prompts[:, pruned] == 0).all()
    assert blocks.e2vpt_token_mask.tolist().count(0.0) == 3


def test_importance_is_the_mean_signed_gradient_of_the_masks():
    model = tiny_vit().eval()
    method = create_method("e2vpt", stage="search", importance_batch_size=4)
    method.attach(model)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(2)]

    class Data:
        def __call__(self, batch_size, max_batches=None):
            return iter(batches)

    loss = torch.nn.functional.cross_entropy
    tokens, segments = method.mask_importance(model, Data(), loss)
    expected = sum(torch.autograd.grad(loss(model(x), y), model.blocks.e2vpt_token_mask)[0] for x, y in batches) / 2
    assert torch.allclose(tokens, expected, atol=1e-7) and segments.shape == (10, 16)
    method.importance = "abs"
    assert (method.mask_importance(model, Data(), loss)[0] >= tokens.abs() - 1e-7).all()


def test_search_then_rewind_through_the_runner(tiny_cfg, tmp_path):
    search_cfg = tiny_cfg("method=e2vpt", "method.stage=search", "epochs=1")
    run(search_cfg)
    search_dir = Path(search_cfg.paths.run_dir)
    scores = json.loads((search_dir / "plan.json").read_text())["plan"]
    assert len(scores["token_scores"]) == 10 and len(scores["segment_scores"][0]) == 16
    cfg = tiny_cfg("method=e2vpt", "method.stage=rewind", f"method.search_run={search_dir}", "method.prune_tokens=2",
                   "method.prune_segments=8", "epochs=1")
    metrics = run(cfg)
    plan = json.loads((Path(cfg.paths.run_dir) / "plan.json").read_text())["plan"]
    assert sorted(torch.tensor(scores["token_scores"]).argsort()[:2].tolist()) == \
        [i for i, m in enumerate(plan["token_mask"]) if m == 0]
    assert plan["search"]["where"] == str(search_dir)
    report = metrics["method_report"]
    assert report["params_surviving"] == L * 8 * 8 * (D // 16) + KV  # 8 tokens × 8 segments × 4 dims per layer
    assert metrics["params"]["trainable_without_head"] == report["params_before_pruning"] == VISUAL + KV


def test_a_rewind_without_its_search_run_is_one_line(tmp_path, tiny_cfg):
    common = ["dataset=digits", "backbone=vit_test", "logger=none", f"paths.runs={tmp_path / 'runs'}"]
    out = run_cli("train.py", *common, "method=e2vpt", "method.stage=rewind", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "method.search_run=" in out.stderr
    other = tiny_cfg("method=linear", "epochs=1")
    run(other)
    out = run_cli("train.py", *common, "method=e2vpt", "method.stage=rewind",
                  f"method.search_run={other.paths.run_dir}", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "is not a finished e2vpt run with method.stage=search" in out.stderr


def test_bad_pruning_counts_are_refused():
    with pytest.raises(MethodError, match="must leave a token"):
        create_method("e2vpt", prompt_tokens=4, prune_tokens=4)
