"""E²VPT — Effective and Efficient Visual Prompt Tuning (Han et al., ICCV 2023, arXiv 2307.13770; official code
ChengHan111/E2VPT).

Visual prompts (deep, as VPT): N_p tokens P_i ∈ R^{N_p×D} per layer, inserted after CLS before layer 1 and
replacing the previous prompt outputs before layers 2..L; dropout 0.1 after expanding over the batch (one mask per
sample). Key-value prompts: per layer one tensor P^kv ∈ R^{H × N_kv × d_h}, in the projected per-head space,
concatenated *in front* of the keys and the values inside attention (the same tensor for both: `share_kv`, the
code's SHARE_PARAM_KV), queries unprompted, no dropout (the code's is inactive):

    Attn(x) = softmax(q [P^kv; k]ᵀ / √d_h) [P^kv; v]

Init: visual prompts U(±√(6/(3·patch² + D))) (0.0625); KV prompts `kaiming_uniform_` on the 3-D tensor,
U(±√(6/(N_kv·d_h))) (0.137 at N_kv = 5). Head as VPT's: Kaiming-normal (fan_out) weight, bias −log(99).
Count: L·N_p·D + L·H·N_kv·d_h = 9,216·(N_p + N_kv) at ViT-B/16 (head excluded).

Pruning and rewinding, a two-stage procedure (`method.stage`):

- `search`: a token mask γ ∈ R^{N_p} and a segment mask η ∈ R^{N_p×16}, both 1 and trainable, multiply every
  layer's prompts after dropout (one mask set for all layers; segment j holds the dims d ≡ j mod 16, the code's
  strided tiling). After the last epoch the importance of each mask entry is measured over the training split
  (model in eval mode): the code's mean over batches of the signed ∂L/∂γ (`importance=signed`, the default), or
  the paper's E|∂L/∂γ| (`importance=abs`, the mean of the batches' |∂L/∂γ|); the scores are the run's plan.
- `rewind` (`method.search_run=<the search run's folder>`): the `prune_tokens` lowest-scoring tokens and, in every
  token, its `prune_segments` lowest-scoring segments are masked (0, frozen); the prompts, KV prompts and head
  start from a fresh random init (the code's rewind), pruned entries at exactly 0, and train the full schedule.
  The code chooses (prune_tokens, prune_segments) on val200 over `candidates(N_p)`: a Hydra sweep over both keys
  under `protocol=tune`. `method_report` gives the count before pruning and the surviving entries (the paper's).
- `none` (the default): no masks (the code's "Origin" runs).

Insertion: `PromptedBlocks` wraps `blocks` (all visual prompts and masks in one place; the block list still
iterates as timm's); `KVPromptAttention` wraps each `blocks.i.attn` (timm's `Attention` forward with the keys and
values extended, its own submodules and kernel). Not mergeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from methods import register_method
from methods.base import DataPass, EpochContext, LossFn, Method, MethodError, choice, freeze_backbone
from methods.tuners import Tuner
from methods.vpt import init_vpt_head, prompt_init_bound, require_cls_vit

STAGES = ("none", "search", "rewind")
IMPORTANCE = ("signed", "abs")
SEGMENTS = 16


def candidates(num_prompts: int, segments: int = SEGMENTS) -> tuple[list[int], list[int]]:
    """The code's rewind grid: token counts int(N_p·p) and segment counts int(16·p) for p = 10 % … 90 %, capped so
    that at least 1 token and 4 segments survive."""
    def counts(n: int, keep: int) -> list[int]:
        return sorted({min(int(n * p / 100), n - keep) for p in range(10, 100, 10)})

    return counts(num_prompts, 1), counts(segments, 4)


class KVPromptAttention(Tuner):
    """timm `Attention` with per-head prompts in front of its keys and values."""

    def __init__(self, base: Attention, length: int, share_kv: bool):
        super().__init__(base)
        if getattr(base, "gate", None) is not None:
            raise MethodError("e2vpt's key-value prompts do not support gated attention")
        shape = (base.num_heads, length, base.head_dim)
        like = base.qkv.weight
        names = ("e2vpt_kv",) if share_kv else ("e2vpt_kv", "e2vpt_kv_value")
        for name in names:
            setattr(self, name, nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype)))
            if length:
                nn.init.kaiming_uniform_(getattr(self, name), a=0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        a = self.base
        if attn_mask is not None or is_causal:
            raise MethodError("e2vpt's key-value prompts do not take attention masks")
        B, N, _ = x.shape
        q, k, v = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        if self.active and self.e2vpt_kv.shape[1]:
            key = self.e2vpt_kv.expand(B, -1, -1, -1)
            value = getattr(self, "e2vpt_kv_value", self.e2vpt_kv).expand(B, -1, -1, -1)
            k, v = torch.cat([key, k], dim=2), torch.cat([value, v], dim=2)
        if a.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * a.scale) @ k.transpose(-2, -1)
            x = a.attn_drop(attn.softmax(dim=-1)) @ v
        x = a.norm(x.transpose(1, 2).reshape(B, N, a.attn_dim))
        return a.proj_drop(a.proj(x))


class PromptedBlocks(Tuner):
    """The block list with VPT-deep prompts, optionally masked by a token and a segment mask shared by all layers."""

    def __init__(self, blocks: nn.Sequential, length: int, dim: int, bound: float, dropout: float, num_prefix: int,
                 masks: str | None, like: torch.Tensor, token_mask: list[float] | None = None,
                 segment_mask: list[list[float]] | None = None):
        super().__init__(blocks)
        self.num_prefix = num_prefix
        dd = {"device": like.device, "dtype": like.dtype}
        self.e2vpt_prompts = nn.Parameter(torch.empty(len(blocks), length, dim, **dd).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)
        if masks == "trainable":
            self.e2vpt_token_mask = nn.Parameter(torch.ones(length, **dd))
            self.e2vpt_segment_mask = nn.Parameter(torch.ones(length, SEGMENTS, **dd))
        elif masks == "fixed":
            self.register_buffer("e2vpt_token_mask", torch.tensor(token_mask, **dd))
            self.register_buffer("e2vpt_segment_mask", torch.tensor(segment_mask, **dd))
            with torch.no_grad():  # pruned entries start at 0; their gradient is 0, so they stay 0
                self.e2vpt_prompts.mul_(self.mask())

    def mask(self) -> torch.Tensor | None:
        """γ ⊗ η tiled to N_p × D (segment j ↔ dims d ≡ j mod 16), or None without masks."""
        token = getattr(self, "e2vpt_token_mask", None)
        if token is None:
            return None
        width = self.e2vpt_prompts.shape[-1]
        return self.e2vpt_segment_mask.repeat(1, width // SEGMENTS) * token[:, None]

    def prompts(self, layer: int, batch: int) -> torch.Tensor:
        p = self.dropout(self.e2vpt_prompts[layer].expand(batch, -1, -1))
        mask = self.mask()
        return p if mask is None else p * mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        k, n = self.num_prefix, self.e2vpt_prompts.shape[1]
        for i, block in enumerate(self.base):
            rest = x[:, k:] if i == 0 else x[:, k + n:]
            x = block(torch.cat([x[:, :k], self.prompts(i, x.shape[0]), rest], dim=1))
        return x

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        return iter(self.base)

    def __getitem__(self, index):
        return self.base[index]


@register_method
class E2VPT(Method):
    """Args:
    prompt_tokens: N_p, visual prompts per layer.
    kv_tokens: N_kv, key-value prompts per layer.
    share_kv: one tensor as key and value prompt (the code's default) or two.
    dropout: on the visual prompts (0.1 in every released command).
    stage: none | search | rewind (see the module docstring).
    importance: signed (the code: mean ∂L/∂mask) | abs (the paper: E|∂L/∂mask|).
    search_run: the search run's folder, for stage=rewind.
    prune_tokens, prune_segments: how many tokens, and segments per token, a rewind masks.
    head_init: vpt (Kaiming-normal fan_out, bias −log 99, as the code) | timm.
    """

    name = "e2vpt"
    prefix = "e2vpt_"

    def __init__(self, prompt_tokens: int = 10, kv_tokens: int = 5, share_kv: bool = True, dropout: float = 0.1,
                 stage: str = "none", importance: str = "signed", search_run: str | None = None,
                 search=None, prune_tokens: int = 0, prune_segments: int = 0, head_init: str = "vpt",
                 importance_batch_size: int = 64):
        self.stage = choice("stage", stage, STAGES)
        self.importance = choice("importance", importance, IMPORTANCE)
        self.head_init = choice("head_init", head_init, ("vpt", "timm"))
        if prompt_tokens < 1 or kv_tokens < 0:
            raise MethodError(f"method.prompt_tokens={prompt_tokens} must be ≥ 1 and method.kv_tokens={kv_tokens} ≥ 0")
        if not 0 <= prune_tokens < prompt_tokens or not 0 <= prune_segments <= SEGMENTS - 4:
            raise MethodError(f"method.prune_tokens={prune_tokens} must leave a token (< {prompt_tokens}) and "
                              f"method.prune_segments={prune_segments} at least 4 of {SEGMENTS} segments")
        if stage == "rewind" and not search_run:
            raise MethodError("method.stage=rewind prunes by the scores of a search run: pass "
                              "method.search_run=<the folder of a finished method.stage=search run>")
        self.prompt_tokens, self.kv_tokens, self.share_kv, self.dropout = prompt_tokens, kv_tokens, share_kv, dropout
        self.search_run, self.search = search_run, search
        self.prune_tokens, self.prune_segments = prune_tokens, prune_segments
        self.importance_batch_size = importance_batch_size
        self.plan: dict | None = None

    @property
    def label(self) -> str:
        return "e2vpt" if self.stage == "none" else f"e2vpt_{self.stage}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        require_cls_vit(model, "e2vpt")
        if model.embed_dim % SEGMENTS:
            raise MethodError(f"e2vpt splits each prompt into {SEGMENTS} segments; width {model.embed_dim} does not")
        freeze_backbone(model)
        if self.head_init == "vpt":
            init_vpt_head(model.get_classifier())
        self.plan = plan
        if self.stage == "rewind" and plan is None:
            return  # the masks come from the search run, in prepare
        for block in model.blocks:
            if self.kv_tokens:
                block.attn = KVPromptAttention(block.attn, self.kv_tokens, self.share_kv)
        masks = {"none": None, "search": "trainable", "rewind": "fixed"}[self.stage]
        token_mask = segment_mask = None
        if self.stage == "rewind":
            token_mask, segment_mask = plan["token_mask"], plan["segment_mask"]
            if len(token_mask) != self.prompt_tokens:
                raise MethodError(f"the E2VPT plan has {len(token_mask)} prompt tokens, this run "
                                  f"{self.prompt_tokens}; rerun with force=true")
        model.blocks = PromptedBlocks(model.blocks, self.prompt_tokens, model.embed_dim, prompt_init_bound(model),
                                      self.dropout, model.num_prefix_tokens, masks, model.cls_token, token_mask,
                                      segment_mask)

    def prepare(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> dict | None:
        if self.stage != "rewind":
            return None
        source, meta = self.search.plan()
        where = meta.get("where", self.search_run)
        if meta.get("method") != self.name or not source or "token_scores" not in source:
            raise MethodError(f"{where} is not a finished e2vpt run with method.stage=search (it has no mask scores);"
                              f" run the search stage first")
        if len(source["token_scores"]) != self.prompt_tokens:
            raise MethodError(f"{where} searched {len(source['token_scores'])} prompt tokens, this run has "
                              f"{self.prompt_tokens}; use the same method.prompt_tokens")
        tokens = torch.tensor(source["token_scores"])
        segments = torch.tensor(source["segment_scores"])
        token_mask = torch.ones_like(tokens)
        token_mask[tokens.argsort()[:self.prune_tokens]] = 0.0
        segment_mask = torch.ones_like(segments)
        lowest = segments.argsort(dim=1)[:, :self.prune_segments]
        segment_mask.scatter_(1, lowest, 0.0)
        plan = {"stage": "rewind", "token_mask": token_mask.tolist(), "segment_mask": segment_mask.tolist(),
                "prune_tokens": self.prune_tokens, "prune_segments": self.prune_segments,
                "importance": source["importance"], "search": {"where": where, "config_hash": meta.get("config_hash")}}
        self.attach(model, plan)
        return plan

    def on_epoch_end(self, model: nn.Module, ctx: EpochContext) -> None:
        if self.stage == "search" and ctx.epoch == ctx.epochs:
            tokens, segments = self.mask_importance(model, ctx.data, ctx.loss_fn)
            ctx.set_plan({"stage": "search", "importance": self.importance, "token_scores": tokens.tolist(),
                          "segment_scores": segments.tolist()})

    def mask_importance(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Per mask entry: the mean over the training split's batches of ∂L/∂mask (signed, as the code), or of its
        absolute value (the paper), with the model in eval mode (no dropout)."""
        blocks = model.blocks
        token, segment = blocks.e2vpt_token_mask, blocks.e2vpt_segment_mask
        was_training = model.training
        model.eval()
        sums, batches = [torch.zeros_like(token), torch.zeros_like(segment)], 0
        try:
            for x, y in data(self.importance_batch_size):
                grads = torch.autograd.grad(loss_fn(model(x), y), [token, segment])
                for total, g in zip(sums, grads, strict=True):
                    total += g.abs() if self.importance == "abs" else g
                batches += 1
        finally:
            model.train(was_training)
        return sums[0].detach().cpu() / batches, sums[1].detach().cpu() / batches

    def nominal_plan(self, model: nn.Module) -> dict | None:
        if self.stage != "rewind":
            return None
        return {"stage": "rewind", "token_mask": [1.0] * self.prompt_tokens,
                "segment_mask": [[1.0] * SEGMENTS] * self.prompt_tokens}

    def report(self, model: nn.Module) -> dict:
        """The count before pruning (every prompt entry, as the code counts) and the entries that survive it."""
        blocks = model.blocks
        if not isinstance(blocks, PromptedBlocks):
            return {}
        kv = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1].startswith("e2vpt_kv"))
        visual = blocks.e2vpt_prompts.numel()
        surviving = visual
        if self.stage == "rewind" and self.plan:
            kept = sum(t * sum(row) for t, row in zip(self.plan["token_mask"], self.plan["segment_mask"], strict=True))
            surviving = int(kept) * (blocks.e2vpt_prompts.shape[-1] // SEGMENTS) * len(blocks)
        return {"params_before_pruning": visual + kv, "params_surviving": surviving + kv,
                "prompt_tokens": self.prompt_tokens, "kv_tokens": self.kv_tokens,
                "candidates": dict(zip(("prune_tokens", "prune_segments"), candidates(self.prompt_tokens),
                                       strict=True))}

