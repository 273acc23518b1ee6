"""VeLoRA: exact outputs and input gradients, weight gradients from the reconstruction, the memory it saves."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from methods import MethodError, create_method
from methods.techniques.velora import VeLoRA, VeLoRALinear, VeLoRAScaleShift
from tests.conftest import run_cli
from tests.method_table import MLP, Case, D, L

SSF = L * 2 * (D + 3 * D + D + D + MLP + D) + 2 * D + 2 * D
CASES = [
    Case(("method=full", "memory=velora"), tiny=None, merges=True, identity_at_init=True, disables=False),
    Case(("method=lora", "memory=velora"), tiny=L * (D * 8 + 8 * 3 * D), merges=True, identity_at_init=True),
    Case(("method=adaptformer", "memory=velora"), identity_at_init=True),
    Case(("method=ssf", "memory=velora"), tiny=SSF, merges=True),
    Case(("method=ssf", "method.placement=reduced", "memory=velora", "memory.init=batch_average"),
         vit_b16=165_888, merges=True),  # VeLoRA's SSF host: 12·2·(2304 + 768 + 3072 + 768)
]


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of `fn()`."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def wrapped(layer: nn.Module, width: int, groups: int, **kwargs):
    cls = VeLoRAScaleShift if hasattr(layer, "ssf_scale") else VeLoRALinear
    return cls(layer, width, groups, kwargs.get("scale", 1.0), kwargs.get("init", "batch_average_once"), 0.9,
               torch.zeros(1)).train()


def test_one_group_per_channel_and_v_one_gives_the_exact_weight_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    x = torch.randn(3, 7, 12, requires_grad=True)
    velora = wrapped(layer, 12, groups=12, init="random")
    velora.velora_v.fill_(1.0)  # d = 1: the projection keeps every value
    out = velora(x)
    assert torch.equal(out, layer(x))
    out.square().sum().backward()
    grads = layer.weight.grad.clone(), layer.bias.grad.clone(), x.grad.clone()
    layer.zero_grad()
    x.grad = None
    layer(x).square().sum().backward()
    assert torch.allclose(grads[0], layer.weight.grad, atol=1e-5) and torch.allclose(grads[1], layer.bias.grad)
    assert torch.allclose(grads[2], x.grad, atol=1e-6)


def test_default_settings_keep_the_wrapped_input_smaller_by_the_subtoken_size():
    torch.manual_seed(0)
    layer = nn.Linear(64, 8)
    x = torch.randn(4, 17, 64, requires_grad=True)
    plain, out_plain = saved_bytes(lambda: layer(x))
    velora = wrapped(layer, 64, groups=8)
    small, out = saved_bytes(lambda: velora(x))
    assert torch.equal(out, out_plain)  # the output is exact
    weight = layer.weight.numel() * 4
    d = 64 // 8
    assert plain - weight == x.numel() * 4  # the plain op keeps its input
    assert small - weight - d * 4 == x.numel() * 4 // d  # VeLoRA keeps one value per sub-token (and v)
    out.sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and x.grad is not None


def test_ssf_gamma_gradient_comes_from_the_reconstruction():
    from methods.layers import ScaleShift

    torch.manual_seed(0)
    ssf = ScaleShift(nn.Linear(6, 6).requires_grad_(False))
    x = torch.randn(2, 5, 6)
    velora = wrapped(ssf, 6, groups=6, init="random")
    velora.velora_v.fill_(1.0)
    velora(x).sum().backward()
    reference = ScaleShift(nn.Linear(6, 6))
    reference.load_state_dict(ssf.state_dict())
    reference(x).sum().backward()
    assert torch.allclose(ssf.ssf_scale.grad, reference.ssf_scale.grad, atol=1e-5)
    assert torch.allclose(ssf.ssf_shift.grad, reference.ssf_shift.grad, atol=1e-5)


@pytest.mark.parametrize("init, changes", [("batch_average_once", False), ("batch_average", True), ("ema", True)])
def test_projection_vector_init(init, changes):
    layer = wrapped(nn.Linear(8, 2), 8, groups=2, init=init)
    first = torch.ones(3, 8)
    layer(first)
    v = layer.velora_v.clone()
    assert torch.allclose(v, torch.full((4,), 0.5)) and bool(layer.velora_ready)  # the normalised batch mean
    layer(torch.arange(24.0).reshape(3, 8))
    assert (not torch.equal(layer.velora_v, v)) == changes
    before_eval = layer.velora_v.clone()
    layer.eval()
    layer(torch.randn(3, 8))  # evaluation runs the plain op and never touches v
    assert torch.equal(layer.velora_v, before_eval)


def test_a_placement_that_would_save_nothing_is_refused():
    """AdaptFormer's adapter reads the input of norm2, which LayerNorm keeps when that input needs a gradient:
    with the patch embedding trained, every block's is kept, so VeLoRA would save nothing."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                              num_classes=5)
    method = create_method("adaptformer")
    method.attach(model)
    model.patch_embed.proj.bias.requires_grad_(True)
    with pytest.raises(MethodError, match="would save no activation memory in method 'adaptformer'"):
        VeLoRA().apply(model, method)


def test_velora_on_linear_probing_is_one_line(tmp_path):
    out = run_cli("train.py", "dataset=digits", "backbone=vit_test", "logger=none", "method=linear", "memory=velora",
                  f"paths.runs={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "memory=velora compresses the inputs of trainable linear ops and method 'linear' has none" in out.stderr
