"""DyT: the dispatcher, the gathered MLP path, compute as deployed against the analytic count, the losses."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from methods import create_method
from methods.base import StepContext
from methods.dyt import DynamicBlock, expected_gmacs
from methods.layers import attention_half, mlp_branch
from runners.report import gmacs_per_image
from tests.method_table import Case, D, L

ADAPTERS, DISPATCHERS = L * (D * 8 + 8 + 8 * D + D), L * (D + 1)
NOT_VIT = "dyt is defined on a timm VisionTransformer, not"

CASES = [
    # 12·(768·8 + 8 + 8·768 + 768) + 12·769, the paper's VTAB setting
    Case(("method=dyt",), vit_b16=165_996, tiny=ADAPTERS + DISPATCHERS,
         backbones={"swin": f"{NOT_VIT} SwinTransformer", "convnext": f"{NOT_VIT} ConvNeXt"}),
    Case(("method=dyt", "method.bottleneck=16"), vit_b16=313_548),  # the released train_vtab.sh
    Case(("method=dyt", "method.distill=false", "method.target_rate=0.9"), tiny=ADAPTERS + DISPATCHERS),
    Case(("method=dyt", "method.experts=2"), tiny=L * (D * 2 + 2 + 2 * (D * 8 + 8 * D)) + DISPATCHERS),
]


class KeepFirst(nn.Module):
    """A dispatcher forced to keep the prefix and the first `keep` patch tokens of every image."""

    def __init__(self, keep: int, num_prefix: int = 1):
        super().__init__()
        self.keep, self.num_prefix = keep, num_prefix

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(h.shape[0], h.shape[1], 1, dtype=h.dtype, device=h.device)
        mask[:, :self.num_prefix + self.keep] = 1
        return mask


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=5).eval()


def adapted(**kwargs):
    model = tiny_vit()
    method = create_method("dyt", **kwargs)
    method.attach(model)
    with torch.no_grad():
        for block in model.blocks:
            block.dyt_adapter.up.weight.normal_(0, 0.1)
    return method, model.eval()


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_keeping_every_token_is_the_adapter_only_model():
    method, model = adapted()
    with torch.no_grad():
        for block in model.blocks:
            block.dyt_dispatcher.dyt_gate.bias.fill_(100.0)
        kept = model(X)
        with method.complete_model(model):
            adapter_only = model(X)
    assert torch.allclose(kept, adapter_only, atol=1e-6)
    block = model.blocks[0]
    tokens = torch.randn(2, 17, 64)
    with torch.no_grad():
        h = attention_half(block.base, tokens)
        assert torch.allclose(block(tokens), block.base(tokens) + block.dyt_adapter(h), atol=1e-5)


def test_the_gathered_mlp_equals_the_masked_dense_path():
    _, model = adapted()
    block = model.blocks[1]
    tokens = torch.randn(4, 17, 64)
    with torch.no_grad():
        h = attention_half(block.base, tokens)
        mask = block.dyt_dispatcher(h)
        assert 0 < mask[:, 1:].sum() < mask[:, 1:].numel()  # a real subset
        dense = h + block.dyt_adapter(h) + mask * mlp_branch(block.base, h)
        assert torch.allclose(block(tokens), dense, atol=1e-5)


def test_gmacs_with_half_the_tokens_kept_match_the_analytic_count_at_vit_b16():
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100).eval()
    create_method("dyt").attach(model)
    for block in model.blocks:
        block.dyt_dispatcher = KeepFirst(98)  # r = 0.5 of the 196 patch tokens, in every block
    measured, _ = gmacs_per_image(model, [torch.randn(1, 3, 224, 224)])
    expected = expected_gmacs(model, 0.5, 8, 224, 100)
    assert measured == pytest.approx(expected, rel=0.01)
    assert measured / 17.56 == pytest.approx(0.686, abs=0.01)  # the paper's learned masks: 12.54 G = 71 %


def test_the_rate_loss_drives_the_keep_rate_toward_its_target():
    method, model = adapted(target_rate=0.9, distill=False)
    dispatchers = [p for n, p in model.named_parameters() if "dyt_gate" in n]
    optimizer = torch.optim.Adam(dispatchers, lr=0.05)
    model.train()
    rates = []
    for _ in range(60):
        logits, aux = method.training_forward(model, X)
        ctx = StepContext(0, 0, X, torch.tensor([0, 1, 2]), logits, F.cross_entropy, lambda n, v: rates.append(v))
        ctx.aux = aux
        terms = method.extra_loss(model, ctx)
        optimizer.zero_grad()
        terms["rate"].backward()
        optimizer.step()
    assert rates[0] < 0.7 and rates[-1] > 0.85


def test_distillation_terms_are_the_codes():
    method, model = adapted()
    model.train()
    y = torch.tensor([0, 1, 2])
    torch.manual_seed(1)
    logits, aux = method.training_forward(model, X)
    assert len(aux["masks"]) == 3 and aux["masks"][0].shape == (3, 17, 1)
    logged = {}
    ctx = StepContext(0, 0, X, y, logits, F.cross_entropy, logged.__setitem__, aux)
    terms = method.extra_loss(model, ctx)
    assert set(terms) == {"rate", "cls_full", "distill"} and 0 <= logged["keep_rate"] <= 1
    model.eval()  # the teacher is the same weights with every MLP token on (no dropout here, to compare)
    with torch.no_grad(), method.complete_model(model):
        full = model(X)
    student = logits.detach()
    p_full = full.softmax(-1)
    kl = (p_full * (p_full.log() - student.log_softmax(-1))).sum(-1).mean()
    model.train()
    assert terms["distill"].item() > 0 and kl.item() > 0
    assert not create_method("dyt", distill=False).distill


def test_training_masks_are_hard_with_a_straight_through_gradient():
    _, model = adapted()
    model.train()
    block = model.blocks[0]
    h = torch.randn(2, 17, 64, requires_grad=True)
    mask = block.dyt_dispatcher(h)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0} and (mask[:, 0] == 1).all()
    mask.sum().backward()
    assert block.dyt_dispatcher.dyt_gate.weight.grad.abs().sum() > 0
    assert isinstance(block, DynamicBlock)
