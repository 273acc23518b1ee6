"""VPT: counts (VPT's own dmlab log), the deep replacement before every block, per-sample prompt dropout."""

import pytest
import timm
import torch

from methods import MethodError, create_method
from methods.vpt import PromptInsert, PromptReplace
from runners.report import count_params
from tests.method_table import Case, D, L

NOT_VIT = "vpt needs a timm VisionTransformer with a CLS token, not"

CASES = [
    Case(("method=vpt",), vit_b16=92_160, tiny=L * 10 * D,  # deep, 12·768·p = 9,216·p
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
    Case(("method=vpt", "method.mode=shallow"), vit_b16=7_680, tiny=10 * D),  # 768·p
]


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=5, **kwargs)


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_vpt_deep_total_matches_vpts_own_dmlab_log():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=6)
        create_method("vpt", mode="deep", prompt_length=100).attach(model)
    counts = count_params(model)
    assert (counts.trainable_with_head, counts.total) == (926_214, 86_724_870)  # demo.ipynb, dmlab p=100


def test_vpt_deep_replaces_prompts_before_every_block():
    model = tiny_vit()
    create_method("vpt", mode="deep", prompt_length=4, dropout=0.0).attach(model)
    inputs = []
    for block in model.blocks:
        inner = block.base if isinstance(block, PromptReplace) else block
        inner.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        model.eval()(X)
    prompts = [model.norm_pre.vpt_prompt] + [b.vpt_prompt for b in model.blocks[1:]]
    assert [tuple(t.shape) for t in inputs] == [(3, 1 + 4 + 16, 64)] * 3  # CLS, p prompts, 16 patches
    for t, p in zip(inputs, prompts, strict=True):  # block i sees prompt set i at 1..p, no positional embedding
        assert torch.equal(t[:, 1:5], p.expand(3, -1, -1))
    bound = (6 / (3 * 8 * 8 + 64)) ** 0.5
    assert all(p.abs().max() <= bound for p in prompts)
    assert isinstance(model.norm_pre, PromptInsert)


def test_prompt_dropout_draws_one_mask_per_sample_deterministically():
    model = tiny_vit()
    create_method("vpt", mode="shallow", prompt_length=8, dropout=0.5).attach(model)
    insert = model.norm_pre.train()

    def masks(seed):
        torch.manual_seed(seed)
        return insert.prompts(2) == 0

    first = masks(3)
    assert not torch.equal(first[0], first[1])  # two samples of one batch, two masks
    assert torch.equal(first, masks(3)) and not torch.equal(first, masks(4))


def test_vpt_refuses_average_pooling():
    with pytest.raises(MethodError, match="pools with 'avg'"):
        create_method("vpt").attach(tiny_vit(global_pool="avg"))
