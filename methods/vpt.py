"""VPT — Visual Prompt Tuning (Jia et al., ECCV 2022, arXiv 2203.12119; official code KMnP/vpt).

p learnable prompt tokens P ∈ R^{p×D}, without positional embedding, enter the sequence after the CLS
token:  z₀ = [CLS; dropout(P₁); E].  Shallow: only P₁.  Deep: before block i (i = 2..L) the p prompt
outputs of block i−1 are replaced by dropout(Pᵢ).  The head reads the CLS token; prompt outputs are
discarded.  Params: shallow D·p, deep L·D·p (ViT-B/16: 9,216·p), head excluded.
Init: U(−v, v), v = √(6 / (3·patch² + D)) (0.0625 at ViT-B/16).  Prompt dropout 0.1 (VPT's deep runs).

Insertion on an unmodified timm ViT: a forward hook on `norm_pre` (the sequence entering the blocks)
inserts P₁ after the prefix tokens; deep adds forward pre-hooks on `blocks.i`, i ≥ 1, that overwrite the
prompt positions.  Needs a timm VisionTransformer with a CLS token and CLS pooling.  Not mergeable.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, freeze_backbone

MODES = ("shallow", "deep")


class PromptBank(nn.Module):
    """`sets` prompt sets of `length` tokens of width `dim`, initialised U(−v, v)."""

    def __init__(self, sets: int, length: int, dim: int, bound: float, dropout: float, device=None, dtype=None):
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(sets, length, dim, device=device, dtype=dtype).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def get(self, i: int, batch: int) -> torch.Tensor:
        return self.dropout(self.prompts[i]).expand(batch, -1, -1)


class InsertPrompts:
    """Forward hook on `norm_pre`: [prefix; P₁; patches]."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, module: nn.Module, args: tuple, x: torch.Tensor) -> torch.Tensor:
        k = self.model.num_prefix_tokens
        return torch.cat([x[:, :k], self.model.vpt.get(0, x.shape[0]), x[:, k:]], dim=1)


class ReplacePrompts:
    """Forward pre-hook on block i: the prompt positions get Pᵢ₊₁."""

    def __init__(self, model: nn.Module, index: int):
        self.model, self.index = model, index

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        k, bank = self.model.num_prefix_tokens, self.model.vpt
        prompts = bank.get(self.index, x.shape[0])
        return (torch.cat([x[:, :k], prompts, x[:, k + prompts.shape[1]:]], dim=1), *rest)


@register_method
class VPT(Method):
    """Args:
    mode: "shallow" or "deep".
    prompt_length: p, the number of prompt tokens (per block in deep mode).
    dropout: on the prompts (VPT: 0.1 for deep runs).
    """

    name = "vpt"

    def __init__(self, mode: str = "deep", prompt_length: int = 10, dropout: float = 0.1):
        if mode not in MODES:
            raise MethodError(f"method.mode={mode} is not a VPT mode; choose shallow or deep")
        self.mode, self.prompt_length, self.dropout = mode, prompt_length, dropout

    @property
    def label(self) -> str:
        return f"vpt_{self.mode}"

    def attach(self, model: nn.Module) -> None:
        if not isinstance(model, VisionTransformer) or model.cls_token is None:
            raise MethodError(f"vpt needs a timm VisionTransformer with a CLS token, not {type(model).__name__}")
        if model.global_pool != "token":
            raise MethodError(f"vpt reads the CLS token; this model pools with '{model.global_pool}', which would "
                              f"mix the prompts in (set backbone.kwargs.global_pool=token)")
        freeze_backbone(model)
        patch = model.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + model.embed_dim))
        sets = len(model.blocks) if self.mode == "deep" else 1
        ref = model.cls_token
        model.vpt = PromptBank(sets, self.prompt_length, model.embed_dim, bound, self.dropout, ref.device, ref.dtype)
        model.norm_pre.register_forward_hook(InsertPrompts(model))
        for i in range(1, sets):
            model.blocks[i].register_forward_pre_hook(ReplacePrompts(model, i))
