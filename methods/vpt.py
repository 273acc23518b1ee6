"""VPT — Visual Prompt Tuning (Jia et al., ECCV 2022, arXiv 2203.12119; official code KMnP/vpt).

p learnable prompt tokens P ∈ R^{p×D}, without positional embedding, enter the sequence after the CLS
token:  z₀ = [CLS; dropout(P₁); E].  Shallow: only P₁.  Deep: before block i (i = 2..L) the p prompt
outputs of block i−1 are replaced by dropout(Pᵢ).  The head reads the CLS token; prompt outputs are
discarded.  Params: shallow D·p, deep L·D·p (ViT-B/16: 9,216·p), head excluded.
Init: U(−v, v), v = √(6 / (3·patch² + D)) (0.0625 at ViT-B/16).
Prompt dropout: as VPT's code, the prompts are expanded over the batch first and dropped out after, so every
sample draws its own mask.

Head (`head_init=vpt`, the default): as VPT's code, Kaiming-normal (fan_out) weight and bias −log((1 − 0.01)/0.01)
= −4.595, a prior of 0.01 per class; `head_init=timm` keeps timm's head init.

Defaults: 10 prompts and dropout 0.1 (VPT's deep VTAB runs, `demo.ipynb`), not VPT's config defaults (5 tokens,
dropout 0.0), which no released VTAB command uses; `experiment=vpt_vtab` sets the per-task lengths.

Insertion on an unmodified timm ViT: `PromptInsert` wraps `norm_pre` (the sequence entering the blocks) and
inserts P₁ after the prefix tokens; deep wraps `blocks.i`, i ≥ 1, in `PromptReplace`, which overwrites the
prompt positions before the block runs. Needs a timm VisionTransformer with a CLS token and CLS pooling.
Not mergeable.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, choice, freeze_backbone
from methods.tuners import Tuner

MODES = ("shallow", "deep")


class _Prompts(Tuner):
    """A tuner holding one prompt set `vpt_prompt` (length × D), U(−bound, bound), with per-sample dropout."""

    def __init__(self, base: nn.Module, length: int, dim: int, bound: float, dropout: float, num_prefix: int,
                 like: torch.Tensor):
        super().__init__(base)
        self.num_prefix = num_prefix
        self.vpt_prompt = nn.Parameter(torch.empty(length, dim, device=like.device, dtype=like.dtype))
        nn.init.uniform_(self.vpt_prompt, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def prompts(self, batch: int) -> torch.Tensor:
        return self.dropout(self.vpt_prompt.expand(batch, -1, -1))


class PromptInsert(_Prompts):
    """After `base` (the module whose output enters the first block): [prefix; P₁; patches]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base(x)
        if not self.active:
            return x
        k = self.num_prefix
        return torch.cat([x[:, :k], self.prompts(x.shape[0]), x[:, k:]], dim=1)


class PromptReplace(_Prompts):
    """Before `base` (block i): the prompt positions get Pᵢ."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.active:
            k, p = self.num_prefix, self.vpt_prompt.shape[0]
            x = torch.cat([x[:, :k], self.prompts(x.shape[0]), x[:, k + p:]], dim=1)
        return self.base(x, *args, **kwargs)


def prompt_init_bound(model: VisionTransformer) -> float:
    """VPT's U(−v, v) bound: v = √(6 / (3·patch_h·patch_w + D))."""
    patch = model.patch_embed.patch_size
    return math.sqrt(6.0 / (3 * patch[0] * patch[1] + model.embed_dim))


def require_cls_vit(model: nn.Module, method: str) -> None:
    """Prompts need a timm ViT whose head reads the CLS token (prompt outputs are discarded)."""
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise MethodError(f"{method} needs a timm VisionTransformer with a CLS token, not {type(model).__name__}")
    if model.global_pool != "token":
        raise MethodError(f"{method} reads the CLS token; this model pools with '{model.global_pool}', which would "
                          f"mix the prompts in (set backbone.kwargs.global_pool=token)")


@torch.no_grad()
def init_vpt_head(head: nn.Module) -> None:
    """VPT's classifier init: Kaiming-normal weight (fan_out, a = 0), bias −log(99) (a 0.01 prior)."""
    nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
    nn.init.constant_(head.bias, -math.log((1 - 0.01) / 0.01))


def insert_prompts(model: VisionTransformer, length: int, deep: bool, dropout: float) -> None:
    """VPT's prompts: P₁ after the prefix tokens, and with `deep` a fresh set before every later block."""
    bound, dim, like = prompt_init_bound(model), model.embed_dim, model.cls_token
    model.norm_pre = PromptInsert(model.norm_pre, length, dim, bound, dropout, model.num_prefix_tokens, like)
    if deep:
        for i in range(1, len(model.blocks)):
            model.blocks[i] = PromptReplace(model.blocks[i], length, dim, bound, dropout, model.num_prefix_tokens,
                                            like)


@register_method
class VPT(Method):
    """Args:
    mode: "shallow" or "deep".
    prompt_length: p, the number of prompt tokens (per block in deep mode).
    dropout: on the prompts, one mask per sample (VPT: 0.1 for deep runs).
    head_init: vpt (VPT's classifier init) | timm.
    """

    name = "vpt"
    prefix = "vpt_"

    def __init__(self, mode: str = "deep", prompt_length: int = 10, dropout: float = 0.1, head_init: str = "vpt"):
        self.mode = choice("mode", mode, MODES)
        self.head_init = choice("head_init", head_init, ("vpt", "timm"))
        if prompt_length < 1:
            raise MethodError(f"method.prompt_length={prompt_length} must be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise MethodError(f"method.dropout={dropout} must be in [0, 1)")
        self.prompt_length, self.dropout = prompt_length, dropout

    @property
    def label(self) -> str:
        return f"vpt_{self.mode}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        require_cls_vit(model, "vpt")
        freeze_backbone(model)
        if self.head_init == "vpt":
            init_vpt_head(model.get_classifier())
        insert_prompts(model, self.prompt_length, self.mode == "deep", self.dropout)
