"""Bottleneck adapters: counts, inits, NOAH's place in the branch under drop-path, VPT's zero-init baseline."""

import pytest
import timm
import torch

from methods import MethodError, create_method
from methods.layers import Bottleneck
from tests.method_table import Case, D, L

ADAPTER_8 = L * (D * 8 + 8 + 8 * D + D)  # down and up with biases, one per block
NO_BLOCKS = "adapter goes into transformer blocks (attn + mlp) and ConvNeXt has none"

CASES = [
    # 12·(768·8 + 8 + 8·768 + 768): the published "0.16M"
    Case(("method=adapter",), vit_b16=156_768, tiny=ADAPTER_8, backbones={"swin": "", "convnext": NO_BLOCKS}),
    Case(("method=adapter", "method.placement=houlsby"), vit_b16=313_536, tiny=2 * ADAPTER_8),
    Case(("method=adapter", "method.order=before_drop_path"), tiny=ADAPTER_8),
    Case(("method=adapter", "method.init=noah"), tiny=ADAPTER_8),
    # VPT's adapter baseline, r = 8: every tensor zero, so the model starts as the backbone
    Case(("method=adapter", "method.bottleneck=96", "method.act=gelu", "method.init=zero", "method.dropout=0.0"),
         vit_b16=1_779_840, identity_at_init=True),
]


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                             num_classes=5, **kwargs)


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


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


@pytest.mark.parametrize("order", ["after_drop_path", "before_drop_path"])
def test_adapter_under_a_dropped_mlp_branch(order):
    """NOAH: x ← x + h + A(h), h = DropPath(MLP(LN2 x)): with the branch dropped the adapter still adds A(0).
    Before the drop-path the adapter is dropped with the MLP: the block adds nothing."""
    model = tiny_vit(drop_path_rate=0.1)
    create_method("adapter", order=order, dropout=0.0).attach(model)
    block = model.blocks[-1]  # stochastic depth grows with depth: the last block has DropPath modules
    block.drop_path1.drop_prob = 0.0
    block.train()
    (block.drop_path2.base if order == "after_drop_path" else block.drop_path2).drop_prob = 1.0
    tokens = torch.randn(2, 17, 64)
    with torch.no_grad():
        h = tokens + block.attn(block.norm1(tokens))
        out = block(tokens)
        if order == "after_drop_path":
            adapter = block.drop_path2.adapter
            assert torch.allclose(out, h + adapter(torch.zeros_like(h)), atol=1e-6)
            assert (adapter(torch.zeros_like(h))).abs().max() > 0  # the official formula differs from the other
        else:
            assert torch.allclose(out, h, atol=1e-6)


def test_bad_adapter_options_name_the_key():
    with pytest.raises(MethodError, match=r"method.placement=x is not one of: pfeiffer, houlsby"):
        create_method("adapter", placement="x")
