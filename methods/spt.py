"""SPT — Sensitivity-aware visual Parameter-efficient fine-Tuning (He et al., ICCV 2023, arXiv 2303.08566;
official code ziplab/SPT).

Stage 1 (`prepare`, data-dependent): with the model in train mode (drop-path on) and a fresh head, the first
16 batches of 32 training images in file order give per-scalar sensitivities s_w = Σ_batches (∂L_batch/∂w)² for
every weight and bias of q, k, v (the row blocks of timm's fused qkv), proj, fc1, fc2, every block LayerNorm and
the final norm. For a budget τ (entries), the global top-τ scalars are split per tensor:

- a matrix W (out × in) with n_W selected entries gets a structured module if n_W ≥ P(W)/α (α = 10), else its
  n_W entries are tuned unstructured; P = r(in + out) for LoRA, 2·r·out + r + out for an adapter (r = 8);
- a vector (bias, LayerNorm) is tuned whole if n ≥ len/β (β = 5), else its n entries unstructured;
- the count is unstructured + structured + whole vectors + the CLS token (D; always tuned), the head excluded.

As the code, τ is scanned over 0.02 M, 0.04 M, … 1.58 M and the configuration whose count is closest to the
budget kept (ties: the larger τ) — the plan. Stage 2 trains exactly it:

- **SPT-LoRA** (parallel): y = W x + DropPath₀.₁(B A · Dropout₀.₁(x)), no scale; q, k, v share one dropout mask
  on the LN1 output; proj's branch has no dropout.
- **SPT-Adapter** (sequential on the output): y ← y + DropPath₀.₁(W_up GELU(W_down Dropout₀.₁(y)) + b), q, k, v
  each their own; fc1 in its 3072-d space before the GELU; proj gets a *parallel* adapter without dropout.
- Unstructured entries: zero-initialised δ at the selected positions, W_eff = W + scatter(δ), so only those
  entries ever change (no weight decay on δ, as in the code's parameter groups). Whole vectors train in place.
- Init `code` (default): what the code really runs — every LoRA and adapter Linear re-initialised trunc-normal
  0.02, biases 0 (so B·A ≠ 0 at step 0); `paper`: B = 0 / up = 0 (the model starts as the pretrained one).
- LayerNorm entries selected unstructured are counted in the budget but never tuned by the code (only Linears
  are swapped): `norm_entries=count` (default) does the same, `norm_entries=tune` tunes them. `method_report`
  gives the nominal (budget arithmetic) and the realised count.

Merge: the LoRA branches and every δ fold into the weights exactly (SPT-LoRA merges into a plain timm ViT);
adapters stay. Insertion: `SPTLinear` wraps `blocks.i.attn.qkv`, `.attn.proj`, `.mlp.fc1`, `.mlp.fc2` where the
plan tunes something; `SPTNorm` wraps a LayerNorm whose entries are tuned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from methods import register_method
from methods.base import DataPass, LossFn, Method, MethodError, choice, freeze_backbone
from methods.layers import unwrapped, vit_blocks
from methods.tuners import Tuner

VARIANTS = ("lora", "adapter")
INITS = ("code", "paper")
NORM_ENTRIES = ("count", "tune")
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def ranked_tensors(model: nn.Module) -> dict[str, tuple[str, int, int, str]]:
    """SPT's ranked tensors in the code's order: name → (module path, row start, row end, parameter name).

    q, k and v are the row blocks of timm's fused `attn.qkv` (rows [0, D), [D, 2D), [2D, 3D)), as the code's
    separate Linears; every other tensor is a whole parameter.
    """
    out: dict[str, tuple[str, int, int, str]] = {}
    width = model.embed_dim
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        for part in ("weight", "bias"):
            out[f"{b}.norm1.{part}"] = (f"{b}.norm1", 0, width, part)
        for j, qkv in enumerate("qkv"):
            for part in ("weight", "bias"):
                out[f"{b}.attn.{qkv}.{part}"] = (f"{b}.attn.qkv", j * width, (j + 1) * width, part)
        for module in ("attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            width_out = unwrapped(model.get_submodule(f"{b}.{module}")).weight.shape[0]
            for part in ("weight", "bias"):
                out[f"{b}.{module}.{part}"] = (f"{b}.{module}", 0, width_out, part)
    for part in ("weight", "bias"):
        out[f"norm.{part}"] = ("norm", 0, width, part)
    return out


def _tensor(model: nn.Module, where: tuple[str, int, int, str]) -> torch.Tensor:
    path, start, end, part = where
    return getattr(unwrapped(model.get_submodule(path)), part)[start:end]


def structured_size(variant: str, shape: tuple[int, int], rank: int) -> int:
    """Parameters of the structured module for a weight of `shape` (out × in)."""
    out, inp = shape
    return rank * (inp + out) if variant == "lora" else 2 * rank * out + rank + out


def allocate(scores: dict[str, torch.Tensor], budget: float, variant: str, rank: int = 8, alpha: float = 10,
             beta: float = 5, structured_vector: bool = True, cls_params: int = 768, scan_step: float = 0.02,
             scan_max: float = 1.58) -> dict:
    """The code's allocation for `budget` (M parameters) from per-scalar `scores` (name → tensor, in ranking order).

    Scans τ = scan_step, 2·scan_step, … ≤ scan_max (M entries), splits the global top-τ scalars per tensor into
    structured matrices, whole vectors and unstructured entries, and keeps the τ whose count is closest to the
    budget (ties: the larger τ). Returns the plan (names, flat indices of unstructured entries, counts)."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float() for n in names])
    sizes = [scores[n].numel() for n in names]
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    steps = [(i, math.ceil(i * scan_step * 1e6)) for i in range(1, round(scan_max / scan_step) + 1)]
    steps = [(i, k) for i, k in steps if k <= flat.numel()]
    if not steps:
        raise MethodError(f"SPT's scan starts at {scan_step} M entries but the model ranks only "
                          f"{flat.numel() / 1e6:.4f} M; set method.scan_step below that")
    order = torch.topk(flat, steps[-1][1]).indices
    owners = owner[order]

    def split(k: int) -> tuple[dict, int]:
        counts = torch.bincount(owners[:k], minlength=len(names)).tolist()
        kinds, total = {}, cls_params
        for name, n, size in zip(names, counts, sizes, strict=True):
            shape = tuple(scores[name].shape)
            if name.rsplit(".", 1)[-1] == "bias" or ".norm" in f".{name}":
                whole = structured_vector and len(shape) == 1 and n >= size / beta
                kinds[name] = ("vector", size) if whole else ("unstructured", n)
            else:
                p = structured_size(variant, shape, rank)
                kinds[name] = ("structured", p) if n >= p / alpha else ("unstructured", n)
            total += kinds[name][1]
        return kinds, total

    best = None
    for i, k in steps:
        kinds, total = split(k)
        if best is None or abs(total - budget * 1e6) <= abs(best[2] - budget * 1e6):
            best = (i, k, total, kinds)
    i, k, total, kinds = best
    if abs(total - budget * 1e6) > 0.5 * budget * 1e6:
        raise MethodError(f"method.budget={budget} (M) cannot be met: the closest SPT configuration of this model "
                          f"has {total / 1e6:.4f} M; choose a budget near what the model can tune")
    starts = torch.tensor([0, *sizes]).cumsum(0)
    chosen, chosen_owner = order[:k], owners[:k]
    unstructured = {}
    for t, name in enumerate(names):
        if kinds[name][0] == "unstructured" and kinds[name][1]:
            unstructured[name] = (chosen[chosen_owner == t] - starts[t]).sort().values.tolist()
    return {
        "variant": variant, "rank": rank, "budget": budget, "tau": round(i * scan_step, 6), "entries": k,
        "nominal": total,
        "structured": [n for n, (kind, _) in kinds.items() if kind == "structured"],
        "vectors": [n for n, (kind, _) in kinds.items() if kind == "vector"],
        "unstructured": unstructured,
    }


class _Branch(nn.Module):
    """One structured module: LoRA (in → r → out, no bias) or adapter (d → r → d, GELU, biases)."""

    def __init__(self, variant: str, inp: int, out: int, rank: int, init: str, like: torch.Tensor):
        super().__init__()
        dd = {"device": like.device, "dtype": like.dtype}
        bias = variant == "adapter"
        self.down = nn.Linear(inp, rank, bias=bias, **dd)
        self.act = nn.GELU() if variant == "adapter" else nn.Identity()
        self.up = nn.Linear(rank, out, bias=bias, **dd)
        if init == "code":  # what the code runs: its init_weights pass re-draws every Linear
            for m in (self.down, self.up):
                nn.init.trunc_normal_(m.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
            nn.init.zeros_(self.up.weight)
        for m in (self.down, self.up):
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def _deltas(owner: nn.Module, name: str, indices: list[int], like: torch.Tensor) -> None:
    owner.register_buffer(f"spt_{name}_index", torch.tensor(indices, dtype=torch.long, device=like.device))
    owner.register_parameter(f"spt_{name}_delta", nn.Parameter(torch.zeros(len(indices), device=like.device,
                                                                          dtype=like.dtype)))


def _apply(tensor: torch.Tensor, owner: nn.Module, name: str) -> torch.Tensor:
    index = getattr(owner, f"spt_{name}_index", None)
    if index is None:
        return tensor
    return tensor.flatten().index_add(0, index, getattr(owner, f"spt_{name}_delta")).view_as(tensor)


class SPTLinear(Tuner):
    """A frozen Linear with SPT's unstructured δ on chosen entries and structured branches on chosen row blocks.

    Args:
        slices: row blocks of the output that each get a branch, as (label, start, end).
        mode: "parallel_dropout" (LoRA on qkv/fc1/fc2), "parallel" (proj: no dropout), "sequential" (adapters).
    """

    def __init__(self, base: nn.Linear, weight_index: list[int], bias_index: list[int],
                 slices: list[tuple[str, int, int]], variant: str, mode: str, rank: int, init: str,
                 dropout: float = 0.1, drop_path: float = 0.1):
        super().__init__(base)
        ref = base.weight
        if weight_index:
            _deltas(self, "weight", weight_index, ref)
        if bias_index:
            _deltas(self, "bias", bias_index, ref)
        self.slices, self.mode = [tuple(s) for s in slices], mode
        inp = base.in_features
        self.spt_branches = nn.ModuleDict({
            label: _Branch(variant, inp if mode != "sequential" else end - start, end - start, rank, init, ref)
            for label, start, end in self.slices})
        self.dropout = nn.Dropout(dropout if mode != "parallel" else 0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mergeable = variant == "lora"

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.base.bias
        return _apply(self.base.weight, self, "weight"), None if bias is None else _apply(bias, self, "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        weight, bias = self.effective()
        y = F.linear(x, weight, bias)
        if not self.slices:
            return y
        h = None if self.mode == "sequential" else self.dropout(x)  # q, k, v share the parallel branches' mask
        pieces, end = [], 0
        for label, s, e in self.slices:
            block = y[..., s:e]
            branch_input = self.dropout(block) if h is None else h
            pieces += [y[..., end:s], block + self.drop_path(self.spt_branches[label](branch_input))]
            end = e
        return torch.cat([*pieces, y[..., end:]], dim=-1)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        weight, bias = self.effective()
        for label, s, e in self.slices:
            branch = self.spt_branches[label]
            weight[s:e] += branch.up.weight @ branch.down.weight
        self.base.weight.copy_(weight)
        if bias is not None:
            self.base.bias.copy_(bias)
        return self.base


class SPTNorm(Tuner):
    """A LayerNorm with δ on chosen entries of its weight and bias (`norm_entries=tune`)."""

    mergeable = True

    def __init__(self, base: nn.LayerNorm, weight_index: list[int], bias_index: list[int]):
        super().__init__(base)
        if weight_index:
            _deltas(self, "weight", weight_index, base.weight)
        if bias_index:
            _deltas(self, "bias", bias_index, base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        return F.layer_norm(x, self.base.normalized_shape, _apply(self.base.weight, self, "weight"),
                            _apply(self.base.bias, self, "bias"), self.base.eps)

    @torch.no_grad()
    def merged(self) -> nn.LayerNorm:
        self.base.weight.copy_(_apply(self.base.weight, self, "weight"))
        self.base.bias.copy_(_apply(self.base.bias, self, "bias"))
        return self.base


@register_method
class SPT(Method):
    """Args:
    variant: "lora" (SPT-LoRA) or "adapter" (SPT-Adapter).
    budget: trainable parameters in M (head excluded, CLS token included), as the code's param_req_<budget>.
    rank: r of the structured modules.
    alpha, beta: a matrix goes structured when ≥ P/α of its entries are selected; a vector whole at ≥ 1/β.
    init: "code" (every branch Linear trunc-normal 0.02, as the code runs) or "paper" (B = 0, up = 0).
    norm_entries: "count" (LayerNorm entries in the budget, never tuned: the code) or "tune".
    sensitivity_batches, sensitivity_batch_size: the data of stage 1 (16 × 32 images, file order).
    scan_step, scan_max: τ's grid in M entries (the code's 0.02 … 1.58).
    dropout, drop_path: on the structured branches (the code's 0.1 and 0.1).
    """

    name = "spt"
    prefix = "spt_"
    allocates_from_data = True

    def __init__(self, variant: str = "lora", budget: float = 0.4, rank: int = 8, alpha: float = 10.0,
                 beta: float = 5.0, init: str = "code", norm_entries: str = "count", sensitivity_batches: int = 16,
                 sensitivity_batch_size: int = 32, scan_step: float = 0.02, scan_max: float = 1.58,
                 dropout: float = 0.1, drop_path: float = 0.1):
        self.variant = choice("variant", variant, VARIANTS)
        self.init = choice("init", init, INITS)
        self.norm_entries = choice("norm_entries", norm_entries, NORM_ENTRIES)
        if budget is None:
            raise MethodError("method.budget is not set: SPT's per-task budgets (0.2 … 1.0 M) were chosen by its "
                              "authors and not published; pass method.budget=… (e.g. 0.4, or sweep 0.2,0.4,…,1.0)")
        if budget <= 0:
            raise MethodError(f"method.budget={budget} must be a positive number of M parameters (e.g. 0.4)")
        if rank < 1 or sensitivity_batches < 1 or sensitivity_batch_size < 1:
            raise MethodError("method.rank, method.sensitivity_batches and method.sensitivity_batch_size must be ≥ 1")
        self.budget, self.rank, self.alpha, self.beta = budget, rank, alpha, beta
        self.sensitivity_batches, self.sensitivity_batch_size = sensitivity_batches, sensitivity_batch_size
        self.scan_step, self.scan_max, self.dropout, self.drop_path = scan_step, scan_max, dropout, drop_path
        self.plan: dict | None = None

    @property
    def label(self) -> str:
        return f"spt_{self.variant}"

    def attach(self, model: nn.Module, plan: dict | None = None) -> None:
        vit_blocks(model, "spt")
        freeze_backbone(model)
        model.cls_token.requires_grad_(True)
        self.plan = plan
        if plan is None:
            return
        if plan.get("variant") != self.variant or plan.get("rank") != self.rank:
            raise MethodError(f"the SPT plan is for variant {plan.get('variant')}, rank {plan.get('rank')}, not "
                              f"{self.variant}, rank {self.rank}; rerun with force=true")
        ranked = ranked_tensors(model)
        unknown = [n for n in (*plan["structured"], *plan["vectors"], *plan["unstructured"]) if n not in ranked]
        if unknown:
            raise MethodError(f"the SPT plan names {unknown[0]}, which this model does not have: it was made for "
                              f"another model; rerun with force=true")
        for path in {ranked[n][0] for n in (*plan["vectors"], *plan["unstructured"], *plan["structured"])}:
            self._wrap(model, path, plan, ranked)

    def _wrap(self, model: nn.Module, path: str, plan: dict, ranked: dict) -> None:
        module = model.get_submodule(path)
        mine = {n: w for n, w in ranked.items() if w[0] == path}
        weight_index, bias_index, slices = [], [], []
        for name, (_, start, end, part) in mine.items():
            cols = module.weight.shape[1] if part == "weight" and module.weight.ndim == 2 else 1
            if name in plan["structured"]:
                slices.append((name.split(".")[-2] if path.endswith("qkv") else "all", start, end))
            elif name in plan["vectors"]:
                if isinstance(module, nn.LayerNorm):
                    getattr(module, part).requires_grad_(True)
                else:
                    bias_index += range(start, end)
            elif name in plan["unstructured"]:
                if isinstance(module, nn.LayerNorm) and self.norm_entries == "count":
                    continue
                target = weight_index if part == "weight" and cols > 1 else bias_index
                target += [start * cols + j for j in plan["unstructured"][name]]
        if isinstance(module, nn.LayerNorm):
            if weight_index or bias_index:
                model.set_submodule(path, SPTNorm(module, weight_index, bias_index))
            return
        if not (weight_index or bias_index or slices):
            return
        if self.variant == "adapter":
            mode = "parallel" if path.endswith("proj") else "sequential"
        else:
            mode = "parallel" if path.endswith("proj") else "parallel_dropout"
        slices.sort(key=lambda s: s[1])
        model.set_submodule(path, SPTLinear(module, sorted(weight_index), sorted(bias_index), slices, self.variant,
                                            mode, self.rank, self.init, self.dropout, self.drop_path))

    def sensitivity(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """s_w = Σ over the first batches of (∂L_batch/∂w)², per ranked scalar, with the model in train mode."""
        ranked = ranked_tensors(model)
        params = {id(p): p for w in ranked.values()
                  for p in [getattr(unwrapped(model.get_submodule(w[0])), w[3])]}
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in params.values():
            p.requires_grad_(True)
        sums = {pid: torch.zeros_like(p, dtype=torch.float32) for pid, p in params.items()}
        was_training = model.training
        model.train()
        try:
            for x, y in data(self.sensitivity_batch_size, self.sensitivity_batches):
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                for pid, p in params.items():
                    sums[pid] += p.grad.float().square()
        finally:
            model.zero_grad(set_to_none=True)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable[n])
            model.train(was_training)
        scores = {}
        for name, (path, start, end, part) in ranked.items():
            scores[name] = sums[id(getattr(unwrapped(model.get_submodule(path)), part))][start:end]
        return scores

    def prepare(self, model: nn.Module, data: DataPass, loss_fn: LossFn) -> dict:
        scores = self.sensitivity(model, data, loss_fn)
        plan = allocate(scores, self.budget, self.variant, self.rank, self.alpha, self.beta, True, model.embed_dim,
                        self.scan_step, self.scan_max)
        self.attach(model, plan)
        return plan

    def report(self, model: nn.Module) -> dict:
        """The budget arithmetic (the code's count, LayerNorm entries included) and what really trains."""
        if self.plan is None:
            return {"budget_m": self.budget}
        plan = self.plan
        norm_entries = sum(len(v) for n, v in plan.get("unstructured", {}).items() if ".norm" in f".{n}")
        untuned = norm_entries if self.norm_entries == "count" else 0
        return {"budget_m": self.budget, "tau_m": plan.get("tau"), "nominal_params": plan.get("nominal"),
                "norm_entries_counted_not_tuned": untuned, "realised_params": (plan.get("nominal") or 0) - untuned}
