"""BitFit: every bias term of the backbone, and nothing that merely has "bias" in its name."""

import timm

from methods import create_method
from tests.method_table import MLP, Case, D, L

BIASES = L * (3 * D + D + MLP + D + 2 * D) + D + D  # qkv, proj, fc1, fc2, norm1/2 + patch, final norm

CASES = [
    # all biases: 12 · 8,448 + patch embed 768 + final norm 768 (reference §3)
    Case(("method=bitfit",), vit_b16=102_912, tiny=BIASES, merges=True, identity_at_init=True, disables=False,
         backbones={"swin": "", "convnext": ""}),
]


def test_bitfit_with_the_mean_vtab_head_is_the_published_014m():
    assert round((102_912 + 38_045) / 1e6, 2) == 0.14


def test_swin_relative_position_bias_tables_stay_frozen():
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1),
                              num_heads=(1, 2), num_classes=10)
    create_method("bitfit").attach(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("relative_position_bias_table" in n for n in trainable)
    assert all(n.endswith(".bias") or n.startswith("head.") for n in trainable)
