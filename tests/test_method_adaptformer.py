"""AdaptFormer: the adapter reads the residual stream before norm2, outside the MLP's drop-path."""

import timm
import torch

from methods import create_method
from tests.method_table import Case, D, L

ADAPTFORMER_64 = L * (D * 64 + 64 + 64 * D + D)
NO_BLOCKS = "adaptformer goes into transformer blocks (attn + mlp) and ConvNeXt has none"

CASES = [
    Case(("method=adaptformer",), vit_b16=1_189_632, tiny=ADAPTFORMER_64, identity_at_init=True,
         backbones={"swin": "", "convnext": NO_BLOCKS}),
    Case(("method=adaptformer", "method.bottleneck=8"), vit_b16=156_768, identity_at_init=True),  # the VTAB tables'
    Case(("method=adaptformer", "method.head_norm=batchnorm"), tiny=ADAPTFORMER_64, identity_at_init=True),
]


def test_the_official_image_runs_head_normalisation():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                              num_classes=5)
    create_method("adaptformer", head_norm="batchnorm").attach(model)
    norm = model.get_classifier().adaptformer_head_norm
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine and norm.eps == 1e-6
    features = torch.randn(6, 64) * 3 + 2
    model.get_classifier().train()(features)
    assert torch.allclose(norm.running_mean, 0.1 * features.mean(0), atol=1e-5)


def test_adaptformer_reads_the_residual_stream_before_norm2_outside_drop_path():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                              num_classes=5, drop_path_rate=0.5)
    create_method("adaptformer", dropout=0.0).attach(model)
    wrapper = model.blocks[-1]  # stochastic depth grows with depth: the last block has DropPath modules
    block, adapter = wrapper.base, wrapper.adaptformer
    with torch.no_grad():
        adapter.up.weight.normal_()
    seen = {}
    block.norm2.register_forward_pre_hook(lambda m, a: seen.update(h=a[0].clone()))
    tokens = torch.randn(2, 17, 64)
    with torch.no_grad():
        out = wrapper.eval()(tokens)
        without = block.mlp(block.norm2(seen["h"])) + seen["h"]
        assert torch.allclose(out, without + 0.1 * adapter.up(torch.relu(adapter.down(seen["h"]))), atol=1e-5)
        model.train()  # the adapter is outside drop-path: with the whole MLP branch dropped it is still added
        block.drop_path2.drop_prob = 1.0
        out = wrapper(tokens)
        assert torch.allclose(out, seen["h"] + 0.1 * adapter.up(torch.relu(adapter.down(seen["h"]))), atol=1e-5)
