"""VPT, LoRA, Adapter, AdaptFormer: exact counts at ViT-B/16, init, merge, insertion, other backbones."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from torch import nn

from methods import MethodError, create_method
from methods.layers import Bottleneck, LoRALinear
from runners.report import count_params

VIT_B16 = 85_798_656


def vit_b16(method: str, num_classes: int = 100, **hparams):
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=num_classes)
        create_method(method, **hparams).attach(model)
    return count_params(model)


@pytest.mark.parametrize("method, hparams, without_head", [
    ("vpt", {"mode": "shallow", "prompt_length": 10}, 7_680),  # 768·p
    ("vpt", {"mode": "deep", "prompt_length": 10}, 92_160),  # 12·768·p = 9,216·p
    ("lora", {"variant": "qkv"}, 294_912),  # 12·(768·8 + 8·2304)
    ("lora", {"variant": "qv"}, 294_912),  # 12·2·(768·8 + 8·768): the same count, another function
    ("adapter", {}, 156_768),  # 12·(768·8 + 8 + 8·768 + 768): the published "0.16M"
    ("adapter", {"placement": "houlsby"}, 313_536),
    ("adapter", {"bottleneck": 96, "act": "gelu", "init": "zero", "dropout": 0.0}, 1_779_840),  # VPT's, r=8
    ("adaptformer", {}, 1_189_632),  # bottleneck 64
    ("adaptformer", {"bottleneck": 8}, 156_768),  # the VTAB tables' setting
])
def test_vit_b16_counts(method, hparams, without_head):
    counts = vit_b16(method, **hparams)
    assert counts.trainable_without_head == without_head
    assert counts.trainable_with_head == without_head + 76_900
    assert counts.total == VIT_B16 + 76_900 + without_head


def test_vpt_deep_total_matches_vpts_own_dmlab_log():
    counts = vit_b16("vpt", num_classes=6, mode="deep", prompt_length=100)
    assert (counts.trainable_with_head, counts.total) == (926_214, 86_724_870)  # demo.ipynb, dmlab p=100


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=5, **kwargs).eval()


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method, hparams", [("lora", {"variant": "qkv"}), ("lora", {"variant": "qv"}),
                                             ("adaptformer", {})])
def test_identity_at_init(method, hparams):
    plain = logits(tiny_vit(), X)
    model = tiny_vit()
    create_method(method, **hparams).attach(model)
    assert torch.allclose(logits(model, X), plain, atol=1e-6)


def test_noah_inits_do_not_start_at_the_pretrained_model():
    plain = logits(tiny_vit(), X)
    for method, hparams in (("lora", {"init": "noah"}), ("adapter", {"init": "noah"})):
        model = tiny_vit()
        create_method(method, **hparams).attach(model)
        assert (logits(model, X) - plain).abs().max() > 1e-3, method


def test_adapter_inits_are_what_they_say():
    torch.manual_seed(0)
    xavier = Bottleneck(768, 8, "quick_gelu", init="xavier")
    bound = (6 / (768 + 8)) ** 0.5
    assert xavier.down.weight.abs().max() <= bound and xavier.down.weight.abs().max() > 0.9 * bound
    assert 0 < xavier.up.bias.abs().max() < 1e-5  # N(0, 1e-6): near-identity only through the biases
    noah = Bottleneck(768, 8, "quick_gelu", init="noah")
    assert abs(noah.up.weight.std().item() - 0.02) < 2e-3 and not noah.up.bias.any()


def test_vpt_zero_adapter_trains_only_the_up_bias():
    """VPT's adapter baseline: all four tensors zero, so only b_up ever gets a gradient (reference §6)."""
    model = tiny_vit()
    create_method("adapter", bottleneck=12, act="gelu", init="zero", dropout=0.0).attach(model)
    model.train()
    torch.nn.functional.cross_entropy(model(X), torch.tensor([0, 1, 2])).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "adapter" in n}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.endswith("up.bias"))
    assert all(g is None or not g.any() for n, g in grads.items() if not n.endswith("up.bias"))


@pytest.mark.parametrize("variant", ["qkv", "qv"])
def test_lora_merge_is_exact_and_leaves_a_plain_timm_model(variant):
    model = tiny_vit()
    method = create_method("lora", variant=variant)
    method.attach(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = logits(model, X)
    merged = method.merge(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert (logits(merged, X) - before).abs().max() < 1e-5
    assert (before - logits(tiny_vit(), X)).abs().max() > 1e-2
    tiny_vit().load_state_dict(merged.state_dict(), strict=True)


def test_lora_qv_adapts_only_q_and_v_rows():
    layer = nn.Linear(4, 12)
    lora = LoRALinear(layer, rank=2, slices=[(0, 4), (8, 12)], scale=0.5)
    with torch.no_grad():
        for b in lora.lora_B:
            b.fill_(1.0)
    delta = lora.delta_weight()
    assert delta[0:4].any() and not delta[4:8].any() and delta[8:12].any()
    x = torch.randn(5, 4)
    assert torch.allclose(lora(x), layer(x) + x @ delta.t(), atol=1e-6)


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "vpt"])
def test_unmergeable_methods_say_so(method):
    with pytest.raises(MethodError, match="no re-parameterised"):
        create_method(method).merge(tiny_vit())


def test_adaptformer_reads_the_residual_stream_before_norm2_outside_drop_path():
    model = tiny_vit(drop_path_rate=0.5)
    create_method("adaptformer", dropout=0.0).attach(model)
    block = model.blocks[0]
    with torch.no_grad():
        block.adaptformer.up.weight.normal_()
    seen = {}
    block.norm2.register_forward_pre_hook(lambda m, a: seen.update(h=a[0].clone()))
    tokens = torch.randn(2, 17, 64)
    with torch.no_grad():
        out = block.eval()(tokens)
        without = block.mlp(block.norm2(seen["h"])) + seen["h"]
        assert torch.allclose(out, without + 0.1 * block.adaptformer.up(torch.relu(block.adaptformer.down(seen["h"]))),
                              atol=1e-5)


def test_vpt_deep_replaces_prompts_before_every_block():
    model = tiny_vit()
    create_method("vpt", mode="deep", prompt_length=4, dropout=0.0).attach(model)
    inputs = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    logits(model, X)
    prompts = model.vpt.prompts
    assert [tuple(t.shape) for t in inputs] == [(3, 1 + 4 + 16, 64)] * 3  # CLS, p prompts, 16 patches
    for i, t in enumerate(inputs):  # block i sees prompt set i at positions 1..p, no positional embedding
        assert torch.equal(t[:, 1:5], prompts[i].expand(3, -1, -1))
    bound = (6 / (3 * 8 * 8 + 64)) ** 0.5
    assert prompts.abs().max() <= bound


def test_vpt_refuses_average_pooling():
    with pytest.raises(MethodError, match="pools with 'avg'"):
        create_method("vpt").attach(tiny_vit(global_pool="avg"))


def tiny_swin():
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2), num_classes=10)


def tiny_convnext():
    return timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10)


ATTACHES = {  # (backbone, method) → None if it attaches, else the start of its one-line error
    ("swin", "vpt"): "vpt needs a timm VisionTransformer with a CLS token, not SwinTransformer",
    ("convnext", "lora"): "lora adapts attention qkv Linears and ConvNeXt has none",
    ("convnext", "adapter"): "adapter goes into transformer blocks (attn + mlp) and ConvNeXt has none",
    ("convnext", "adaptformer"): "adaptformer goes into transformer blocks (attn + mlp) and ConvNeXt has none",
    ("convnext", "vpt"): "vpt needs a timm VisionTransformer with a CLS token, not ConvNeXt",
}


@pytest.mark.parametrize("backbone", ["swin", "convnext"])
@pytest.mark.parametrize("method", ["full", "linear", "bitfit", "ssf", "lora", "adapter", "adaptformer", "vpt"])
def test_hierarchical_backbones_attach_and_train_a_step_or_say_why(backbone, method):
    model = {"swin": tiny_swin, "convnext": tiny_convnext}[backbone]()
    error = ATTACHES.get((backbone, method))
    if error:
        with pytest.raises(MethodError, match=re.escape(error)):
            create_method(method).attach(model)
        return
    create_method(method).attach(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.SGD(trainable, lr=0.1)
    torch.nn.functional.cross_entropy(model.train()(X), torch.tensor([0, 1, 2])).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))
