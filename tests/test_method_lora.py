"""LoRA: fused qkv (NOAH) and q/v variants, their inits, and the exact row placement of the q/v variant."""

import torch
from torch import nn

from methods.layers import LoRALinear
from tests.method_table import Case, D, L

LORA_8 = L * (D * 8 + 8 * 3 * D)  # A: 8×D, B: 3D×8 on the fused qkv
NO_QKV = "lora adapts attention qkv Linears and ConvNeXt has none"

CASES = [
    Case(("method=lora",), vit_b16=294_912, tiny=LORA_8, merges=True, identity_at_init=True,
         backbones={"swin": "", "convnext": NO_QKV}),  # 12·(768·8 + 8·2304)
    # 12·2·(768·8 + 8·768): the same count, another function
    Case(("method=lora", "method.variant=qv"), vit_b16=294_912, tiny=LORA_8, merges=True, identity_at_init=True),
    # NOAH's runs started from trunc-normal 0.02 on A and B: not the pretrained model at step 0
    Case(("method=lora", "method.init=noah"), tiny=LORA_8, merges=True),
]


def test_lora_qv_adapts_only_q_and_v_rows():
    layer = nn.Linear(4, 12)
    lora = LoRALinear(layer, rank=2, slices=[(0, 4), (8, 12)], scale=0.5)
    with torch.no_grad():
        for b in lora.lora_B:
            b.weight.fill_(1.0)
    delta = lora.delta_weight()
    assert delta[0:4].any() and not delta[4:8].any() and delta[8:12].any()
    x = torch.randn(5, 4)
    assert torch.allclose(lora(x), layer(x) + x @ delta.t(), atol=1e-6)
