"""SCT — Salient Channel Tuning (arXiv 2309.08513; official code showlab/SCT).

Before training, the frozen backbone runs once over the task's training split (no augmentation, eval mode):
in every block l the residual stream after the attention add, x_l = x + Attn(LN1 x) (the input of `norm2`),
is read on the patch tokens. Class-aware importance of channel j:

    a_{c,j} = ‖X_l^{(c)}[:, :, j]‖₂   over all images of class c × patch tokens (not squared, not normalised),
    s_j = mean over the classes present of a_{c,j},

and the top K = D/8 channels S_l (96 at ViT-B/16) are kept per layer, in ascending channel order — the plan.
The module then updates those channels after the attention residual add, for all tokens (CLS included):

    x[..., S_l] ← x[..., S_l] + W_l x[..., S_l] + b_l,   W_l ∈ R^{K×K}, b_l ∈ R^K,

no activation, scale, dropout or drop-path; the result feeds `norm2`/MLP and the residual. Init: W_l
trunc-normal 0.02, b_l = 0 (a small, non-zero update at step 0). Count: L·(K² + K) = 111,744 at ViT-B/16 (head
excluded). `position=mlp` is the code's `sct_mlp` ablation: channels chosen on each block's output, the module on
the MLP output before drop-path (the mismatch is the code's). Not mergeable: the update sits on the residual
stream between the two halves of the block.

Insertion: `SalientChannels` wraps `blocks.i` (timm's pre-norm ViT `Block`, composed from its own submodules);
with `position=mlp`, `SalientUpdate` wraps `blocks.i.mlp`.
"""

from __future__ import annotations

import torch
from torch import nn

from methods import register_method
from methods.base import DataPass, LossFn, Method, MethodError, choice, freeze_backbone
from methods.layers import attention_half, mlp_branch, unwrapped, vit_blocks
from methods.tuners import Tuner

POSITIONS = ("attn", "mlp")


class ChannelUpdate(nn.Module):
    """x ↦ x with x[..., S] + W x[..., S] + b written into the channels S."""

    def __init__(self, channels: list[int], like: torch.Tensor):
        super().__init__()
        self.register_buffer("sct_channels", torch.tensor(channels, dtype=torch.long, device=like.device))
        self.sct_linear = nn.Linear(len(channels), len(channels), device=like.device, dtype=like.dtype)
        nn.init.trunc_normal_(self.sct_linear.weight, std=0.02)
        nn.init.zeros_(self.sct_linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_add(-1, self.sct_channels, self.sct_linear(x.index_select(-1, self.sct_channels)))


class SalientChannels(Tuner):
    """A ViT block with the channel update between its attention and MLP halves."""

    def __init__(self, block: nn.Module, update: ChannelUpdate):
        super().__init__(block)
        self.sct = update

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if not self.active:
            return self.base(x, **kwargs)
        h = self.sct(attention_half(self.base, x, **kwargs))
        return h + mlp_branch(self.base, h)


class SalientUpdate(Tuner):
    """`base`'s output with the channel update (the `mlp` position)."""

    def __init__(self, base: nn.Module, update: ChannelUpdate):
        super().__init__(base)
        self.sct = update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return self.sct(y) if self.active else y


@register_method
class SCT(Method):
    """Args:
    topk: K, channels kept per layer (default D/8: 96 at ViT-B/16).
    position: "attn" (the default `sct_attn`: after the attention residual add) or "mlp" (`sct_mlp`).
    batch_size: images per batch of the selection pass (the code's 50; it does not change the result).
    """

    name = "sct"
    prefix = "sct"

    def __init__(self, topk: int | None = None, position: str = "attn", batch_size: int = 50):
        self.position = choice("position", position, POSITIONS)
        if topk is not None and topk < 1:
            raise MethodError(f"method.topk={topk} must be at least 1")
        self.topk, self.batch_size = topk, batch_size

    @property
    def label(self) -> str:
        return "sct" if self.position == "attn" else f"sct_{self.position}"

    def _k(self, model: nn.Module) -> int:
        width = model.embed_dim
        k = self.topk or width // 8
        if k > width:
            raise MethodError(f"method.topk={k} exceeds the {width} channels of {type(model).__name__}; choose at "
                              f"most {width}")
        return k

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        blocks = vit_blocks(model, "sct")
        freeze_backbone(model)
        if plan is None:
            return
        channels = plan.get("channels", [])
        k, width = self._k(model), model.embed_dim
        if (plan.get("position") != self.position or len(channels) != len(blocks)
                or any(len(c) != k or max(c) >= width for c in channels)):
            raise MethodError(f"the SCT plan ({len(channels)} layers, position {plan.get('position')}) was made for "
                              f"another model or settings than this {len(blocks)}-layer one with topk={k}, position "
                              f"{self.position}; rerun with force=true")
        for (name, block), chosen in zip(blocks, channels, strict=True):
            update = ChannelUpdate(chosen, block.norm2.weight)
            if self.position == "attn":
                model.set_submodule(name, SalientChannels(block, update))
            else:
                model.set_submodule(f"{name}.mlp", SalientUpdate(block.mlp, update))

    @torch.no_grad()
    def prepare(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> dict:
        """Class-aware channel importance over the training split; builds the modules and returns the channels."""
        blocks = vit_blocks(model, "sct")
        k, prefix = self._k(model), model.num_prefix_tokens
        ref = model.embed_dim
        sums = torch.zeros(len(blocks), data.num_classes, ref, dtype=torch.float64, device=model.cls_token.device)
        seen = torch.zeros(data.num_classes, dtype=torch.bool, device=sums.device)
        taps: list[torch.Tensor] = []

        def keep(tensor: torch.Tensor) -> None:
            taps.append(tensor[:, prefix:])

        if self.position == "attn":
            handles = [unwrapped(b).norm2.register_forward_pre_hook(lambda m, a: keep(a[0])) for _, b in blocks]
        else:
            handles = [unwrapped(b).register_forward_hook(lambda m, a, out: keep(out)) for _, b in blocks]
        was_training = model.training
        model.eval()
        try:
            for x, y in data(self.batch_size):
                taps.clear()
                model(x)
                y = y.to(sums.device)
                seen[y] = True
                for layer, features in enumerate(taps):
                    sums[layer].index_add_(0, y, features.double().square().sum(dim=1))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        scores = sums[:, seen].sqrt().mean(dim=1)  # L × D: mean over the classes present of the class norms
        channels = [sorted(torch.topk(s, k).indices.tolist()) for s in scores]
        plan = {"position": self.position, "topk": k, "channels": channels}
        self.attach(model, plan)
        return plan

    def nominal_plan(self, model: nn.Module) -> dict:
        k = self._k(model)
        return {"position": self.position, "topk": k, "channels": [list(range(k))] * len(model.blocks)}
