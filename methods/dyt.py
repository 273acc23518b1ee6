"""DyT — Dynamic Tuning (Zhao et al., NeurIPS 2024, arXiv 2403.11808; official code NUS-HPC-AI-Lab/Dynamic-Tuning),
the default "MLP Dispatch" in every block.

Per block, h = x + Attn(LN1 x) on all tokens; a token dispatcher s = h W_g + b_g (a Linear D → 1 on h, the
post-attention residual, patch tokens only) gives a mask M (CLS always 1); the MLP acts on the activated tokens
only, and a parallel adapter on all of them:

    x′ = h + M ⊙ MLP(LN2 h) + W_up Dropout₀.₁(ReLU(W_down h + b_down)) + b_up

Training: Gumbel-sigmoid S = σ((s + G₁ − G₂)/τ), G ~ Gumbel(0, 1) per token and step, τ = 5 (constant, as the
code), hard mask M = 1[S > 0.5] with a straight-through gradient; the MLP runs densely and is masked. Inference:
M = 1[σ(s) > 0.5] and the MLP runs on the gathered activated tokens of the whole batch only, so the saving is
real (the run's `gmacs_per_image` counts it per image).

Losses (`extra_loss`, each logged): the rate loss 2·(mean M − r)² over batch × layers × patch tokens (`rate`,
with the realised `keep_rate`); with `distill` (the NeurIPS version, default) a second forward of the same
weights without masking gives CE(y, p_full) (`cls_full`, not detached) and KL(p_full.detach() ‖ p_dyn)
(`distill`, batch mean). Init as the code: dispatcher trunc-normal 0.02, bias 0; adapter down Kaiming-uniform, up
and biases 0; the head re-drawn trunc-normal 0.01, bias 0.

Count at ViT-B/16: adapters 12·(768·8 + 8 + 8·768 + 768) + dispatchers 12·769 = 165,996 at the paper's
bottleneck 8 (the released script's 16: 313,548). `experts > 0`: the MoE adapter of the paper's DyT† (N expert
pairs merged per image by a router on the token mean); the paper leaves open whether the router is softmaxed
(here: softmax) and whether the experts have biases (here: none) — flagged, not the published setting for VTAB.

Insertion: `DynamicBlock` wraps each `blocks.i` (timm's pre-norm ViT `Block`, composed from its own submodules);
its dispatcher is the child `dyt_dispatcher`, read by a per-call tap in `training_forward`. Not mergeable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from methods import register_method
from methods.base import Method, MethodError, StepContext, freeze_backbone
from methods.layers import Bottleneck, attention_half, mlp_branch, vit_blocks
from methods.tuners import Tuner, tuners


class Dispatcher(nn.Module):
    """The token dispatcher: a Linear D → 1 on the patch tokens; returns the mask (B × N × 1), prefix tokens 1."""

    def __init__(self, dim: int, num_prefix: int, tau: float, like: torch.Tensor):
        super().__init__()
        self.num_prefix, self.tau = num_prefix, tau
        self.dyt_gate = nn.Linear(dim, 1, device=like.device, dtype=like.dtype)
        nn.init.trunc_normal_(self.dyt_gate.weight, std=0.02)
        nn.init.zeros_(self.dyt_gate.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.dyt_gate(h[:, self.num_prefix:]).float()
        if self.training:  # Gumbel-sigmoid with a straight-through hard mask
            g1 = -torch.empty_like(logits).exponential_().log()
            g2 = -torch.empty_like(logits).exponential_().log()
            soft = torch.sigmoid((logits + g1 - g2) / self.tau)
            mask = (soft > 0.5).to(soft.dtype) - soft.detach() + soft
        else:
            mask = (torch.sigmoid(logits) > 0.5).to(logits.dtype)
        prefix = mask.new_ones(mask.shape[0], self.num_prefix, 1)
        return torch.cat([prefix, mask], dim=1).to(h.dtype)


class MoEAdapter(nn.Module):
    """N expert adapters merged per image: α = softmax(router(mean of the tokens)), W = Σ αᵢ Wᵢ (DyT†)."""

    def __init__(self, dim: int, bottleneck: int, experts: int, dropout: float, like: torch.Tensor):
        super().__init__()
        dd = {"device": like.device, "dtype": like.dtype}
        self.router = nn.Linear(dim, experts, **dd)
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)
        self.down = nn.Parameter(torch.empty(experts, dim, bottleneck, **dd))
        self.up = nn.Parameter(torch.zeros(experts, bottleneck, dim, **dd))
        for e in range(experts):
            nn.init.kaiming_uniform_(self.down.data[e].T, a=5**0.5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        alpha = self.router(h.mean(dim=1)).softmax(dim=-1)  # B × N
        down = torch.einsum("be,edr->bdr", alpha, self.down)
        up = torch.einsum("be,erd->brd", alpha, self.up)
        return self.dropout(torch.relu(h @ down)) @ up


class DynamicBlock(Tuner):
    """A ViT block whose MLP runs only on the tokens its dispatcher activates, with a parallel adapter."""

    def __init__(self, block: nn.Module, dispatcher: Dispatcher, adapter: nn.Module):
        super().__init__(block)
        self.dyt_dispatcher = dispatcher
        self.dyt_adapter = adapter
        self.complete = False  # set only for the duration of a complete-model forward (`DyT.complete_model`)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if not self.active:
            return self.base(x, **kwargs)
        h = attention_half(self.base, x, **kwargs)
        adapted = h + self.dyt_adapter(h)
        if self.complete:
            return adapted + mlp_branch(self.base, h)
        mask = self.dyt_dispatcher(h)
        if self.training:
            return adapted + mask * mlp_branch(self.base, h)
        flat = h.reshape(-1, h.shape[-1])
        keep = mask.reshape(-1).nonzero().squeeze(1)
        mlp = flat.new_zeros(flat.shape).index_copy(0, keep, mlp_branch(self.base, flat[keep]))
        return adapted + mlp.view_as(h)


@register_method
class DyT(Method):
    """Args:
    target_rate: r, the activation rate the rate loss pulls toward (0.5, 0.7, 0.9 on VTAB).
    rate_weight: the rate loss's weight (2.0).
    tau: the Gumbel-sigmoid temperature (5, constant).
    bottleneck: the adapter's width (8: the paper's VTAB count; 16: the released script).
    dropout: inside the adapter (0.1).
    distill: the complete-model CE and self-distillation of the NeurIPS version.
    experts: 0 for the plain adapter; N > 0 for the MoE adapter (DyT†; flagged: details open in the paper).
    """

    name = "dyt"
    prefix = "dyt_"
    eval_shapes_depend_on_data = True  # inference runs the MLP on the dispatched tokens only

    def __init__(self, target_rate: float = 0.5, rate_weight: float = 2.0, tau: float = 5.0, bottleneck: int = 8,
                 dropout: float = 0.1, distill: bool = True, experts: int = 0):
        if not 0.0 < target_rate <= 1.0:
            raise MethodError(f"method.target_rate={target_rate} must be in (0, 1]")
        if bottleneck < 1 or experts < 0 or tau <= 0:
            raise MethodError("method.bottleneck must be ≥ 1, method.experts ≥ 0 and method.tau > 0")
        self.target_rate, self.rate_weight, self.tau = target_rate, rate_weight, tau
        self.bottleneck, self.dropout, self.distill, self.experts = bottleneck, dropout, distill, experts

    @property
    def label(self) -> str:
        label = f"dyt_r{self.target_rate:g}"
        return label + ("_moe" if self.experts else "") + ("" if self.distill else "_nodistill")

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        blocks = vit_blocks(model, "dyt")
        freeze_backbone(model)
        head = model.get_classifier()
        with torch.no_grad():
            nn.init.trunc_normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        for name, block in blocks:
            ref, width = block.norm2.weight, model.embed_dim
            dispatcher = Dispatcher(width, model.num_prefix_tokens, self.tau, ref)
            if self.experts:
                adapter = MoEAdapter(width, self.bottleneck, self.experts, self.dropout, ref)
            else:
                adapter = Bottleneck(width, self.bottleneck, "relu", self.dropout, init="lora", device=ref.device,
                                     dtype=ref.dtype)
            model.set_submodule(name, DynamicBlock(block, dispatcher, adapter))

    def training_forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The dynamic forward, with every block's mask read by a tap that lives only for this call."""
        masks: list[torch.Tensor] = []
        handles = [b.dyt_dispatcher.register_forward_hook(lambda m, a, out: masks.append(out))
                   for _, b in tuners(model) if isinstance(b, DynamicBlock)]
        try:
            logits = model(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, {"masks": masks}

    @contextlib.contextmanager
    def complete_model(self, model: nn.Module) -> Iterator[None]:
        """Every block runs its MLP on all tokens (the NeurIPS version's complete model), for one forward."""
        blocks = [b for _, b in tuners(model) if isinstance(b, DynamicBlock)]
        for b in blocks:
            b.complete = True
        try:
            yield
        finally:
            for b in blocks:
                b.complete = False

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> dict[str, torch.Tensor]:
        prefix = model.num_prefix_tokens
        rate = torch.stack([m[:, prefix:].float().mean() for m in ctx.aux["masks"]]).mean()
        ctx.log("keep_rate", rate.detach())
        terms = {"rate": self.rate_weight * (rate - self.target_rate).square()}
        if self.distill:
            with self.complete_model(model):
                full = model(ctx.inputs)
            terms["cls_full"] = ctx.loss_fn(full, ctx.targets)
            terms["distill"] = F.kl_div(F.log_softmax(ctx.logits.float(), -1), F.log_softmax(full.detach().float(), -1),
                                        reduction="batchmean", log_target=True)
        return terms

    def report(self, model: nn.Module) -> dict:
        size = model.patch_embed.img_size[0]
        return {"target_rate": self.target_rate, "bottleneck": self.bottleneck, "experts": self.experts,
                "gmacs_expected_at_target_rate": round(expected_gmacs(model, self.target_rate, self.bottleneck, size,
                                                                      model.get_classifier().out_features), 4)}


def expected_gmacs(model: nn.Module, rate: float, bottleneck: int, image_size: int, num_classes: int) -> float:
    """Multiply-adds per image (G) of DyT at activation rate `rate` on every block of a timm ViT, counted as torch's
    FlopCounterMode counts them (matmuls): attention on all tokens, the MLP on CLS + rate · patch tokens, the
    adapter and the dispatcher on all, plus patch embedding and head."""
    d, blocks = model.embed_dim, len(model.blocks)
    patches = (image_size // model.patch_embed.patch_size[0]) ** 2
    n = patches + model.num_prefix_tokens
    hidden = vit_blocks(model, "dyt")[0][1].mlp.fc1.out_features
    attention = n * d * 3 * d + 2 * n * n * d + n * d * d
    mlp = (model.num_prefix_tokens + rate * patches) * 2 * d * hidden
    extra = n * 2 * d * bottleneck + patches * d
    embed = patches * 3 * model.patch_embed.patch_size[0] ** 2 * d
    return (blocks * (attention + mlp + extra) + embed + d * num_classes) / 1e9
