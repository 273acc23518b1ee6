"""Backbone weights from local files: Google's .npz layout, safetensors and torch state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from runners import compose
from runners.backbone import build_backbone
from runners.errors import UserError

ARCH = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def source_model(num_classes: int = 7):
    torch.manual_seed(123)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **ARCH)


def backbone_cfg(checkpoint):
    cfg = compose(["backbone=vit_test", f"backbone.checkpoint={checkpoint}"]).backbone
    cfg.kwargs = OmegaConf.create(ARCH)
    return cfg


def to_google_npz(model, path):
    """Write a timm ViT in the layout of Google's ViT-B_16.npz (HWIO conv, per-head q/k/v kernels)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    heads, width = model.blocks[0].attn.num_heads, model.embed_dim
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for name, wi, bi in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            w[mha + f"{name}/kernel"] = wi.T.reshape(width, heads, -1)
            w[mha + f"{name}/bias"] = bi.reshape(heads, -1)
        w[mha + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, -1, width)
        w[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, key in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + f"{ln}/scale"], w[p + f"{ln}/bias"] = sd[b + key + ".weight"], sd[b + key + ".bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def save_pth(model, path):
    torch.save({"model": model.state_dict()}, path)


def save_safetensors(model, path):
    save_file(model.state_dict(), str(path))


@pytest.mark.parametrize("suffix, writer", [(".npz", to_google_npz), (".pth", save_pth),
                                            (".safetensors", save_safetensors)])
def test_local_checkpoint_loads_every_backbone_weight_and_drops_the_old_head(suffix, writer, tmp_path):
    source = source_model(num_classes=7)
    path = tmp_path / f"weights{suffix}"
    writer(source, path)
    model = build_backbone(backbone_cfg(path), num_classes=3)
    loaded, original = model.state_dict(), source.state_dict()
    assert set(loaded) == set(original)
    for key in original:
        if key.startswith("head."):
            assert loaded[key].shape[0] == 3
        else:
            assert torch.allclose(loaded[key], original[key], atol=1e-6), key


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="could not read backbone.checkpoint=.*SafetensorError"):
        build_backbone(backbone_cfg(path), num_classes=3)


def test_mocov3_pretraining_checkpoint_needs_and_takes_its_prefix(tmp_path):
    """MoCo v3's `vit-b-300ep.pth.tar`: {'state_dict': {'module.base_encoder.…', 'module.momentum_encoder.…', …}}."""
    source = source_model(num_classes=256)
    sd = source.state_dict()
    state = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    state |= {f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in sd.items()}
    state["module.predictor.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state}, path)

    with pytest.raises(UserError, match="lacks .* weights .* set backbone.checkpoint_prefix=base_encoder."):
        build_backbone(backbone_cfg(path), num_classes=3)
    cfg = backbone_cfg(path)
    cfg.checkpoint_prefix = "base_encoder."
    model = build_backbone(cfg, num_classes=3)
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, sd[key]), key


def test_mocov3_backbone_demands_a_checkpoint():
    with pytest.raises(UserError, match="backbone mocov3_vit_b16 has no hub weights; pass backbone.checkpoint="):
        build_backbone(compose(["backbone=mocov3_vit_b16"]).backbone, num_classes=3)
