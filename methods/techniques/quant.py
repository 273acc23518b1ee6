"""`quant=1bit` — low-precision task modules: the 1-bit adapters (Jie et al., ICCV 2023, arXiv 2307.16867; official
code JieShibo/PETL-ViT `binary_adapter/`), for any host whose trainable tensors are weight matrices.

Every trainable weight matrix W of the method's modules (and the head with `bi_head`) is fake-quantised at each
forward, through `torch.nn.utils.parametrize`:

    μ = mean(W), σ = std(W) (unbiased),  u = (W − μ) / (σ + 1e-5),
    W_q = σ · (q(u) + u − sg(u)) + μ        (straight-through; μ and σ are not detached)

with q the nearest level of a fixed codebook for N(0, 1): the code's Lloyd-type iteration (thresholds at the midpoints
of the levels, each level the median of N(0, 1) in its cell, 500 rounds from all-zero levels) — 1 bit ±0.6745
(±Φ⁻¹(0.75)), 2 bits ±0.3778 / ±1.2657, 4 bits 16 levels. A latent matrix of zeros has no spread to standardise:
as the code's up-projections, such a matrix starts trunc-normal(0, 0.001) within ±0.002.

Storage (`trainable.safetensors`): per matrix the codebook indices packed `bits` per value, least significant first,
row-major, plus μ and σ as float32 — exactly the code's `.bin` accounting (Bi-AdaptFormer dim 32: 73,920 B of
adapter weights; Bi-LoRA dim 32: 147,840 B); the head stays float32 unless `bi_head` (then 1 bit, no bias). Loading
rebuilds W = level[index] · σ + μ, bit-identical to the training-time W_q, so the logits are the same.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.base import Method, MethodError, head_module, head_name
from methods.techniques import Technique
from methods.tuners import tuners


def codebook(bits: int, iterations: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, thresholds), ascending, of the code's N(0, 1) quantiser with 2^bits levels."""
    levels = torch.zeros(2**bits, dtype=torch.float64)
    for _ in range(iterations):
        thresholds = (levels[1:] + levels[:-1]) / 2
        cells = torch.cat([torch.zeros(1, dtype=torch.float64), torch.special.ndtr(thresholds),
                           torch.ones(1, dtype=torch.float64)])
        levels = torch.special.ndtri((cells[1:] + cells[:-1]) / 2)
    return levels.float(), ((levels[1:] + levels[:-1]) / 2).float()


class Quantise(nn.Module):
    """The parametrisation W ↦ W_q (straight-through, μ and σ in the graph)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        levels, thresholds = codebook(bits)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("thresholds", thresholds, persistent=False)

    def indices(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = weight.mean(), weight.std()
        u = (weight - mu) / (sigma + 1e-5)
        return torch.bucketize(u.detach(), self.thresholds.to(u.dtype)), u, mu, sigma

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        index, u, mu, sigma = self.indices(weight)
        q = self.levels.to(u.dtype)[index]
        return (q + (u - u.detach())) * sigma + mu

    def dequantise(self, index: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.levels.to(mu.dtype)[index.long()] * sigma + mu


def pack(index: torch.Tensor, bits: int) -> torch.Tensor:
    """Indices (any shape, values < 2^bits) → uint8, `8 // bits` per byte, least significant first, row-major."""
    per_byte = 8 // bits
    flat = index.flatten().to(torch.int32)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per_byte)])
    shifts = torch.arange(per_byte, dtype=torch.int32, device=flat.device) * bits
    return (flat.view(-1, per_byte) << shifts).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * bits
    return ((packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)).flatten()[:count]


class OneBit(Technique):
    """Args:
    bits: 1, 2 or 4 bits per weight.
    bi_head: the head is quantised too (1 bit, no bias), as the code's Bi-Head variants.
    """

    group = "quant"

    def __init__(self, bits: int = 1, bi_head: bool = False, label: str = "1bit"):
        super().__init__(label)
        if bits not in (1, 2, 4):
            raise MethodError(f"quant.bits={bits} is not one of: 1, 2, 4")
        self.bits, self.bi_head = bits, bi_head

    def _matrices(self, model: nn.Module) -> list[tuple[str, nn.Linear, int]]:
        """(name, Linear, bits) of every weight matrix quantised (the head's at 1 bit with bi_head)."""
        head = head_module(model)
        found = []
        for prefix, tuner in tuners(model):
            for name, m in tuner.named_modules():
                if isinstance(m, nn.Linear) and not name.startswith("base") and m.weight.requires_grad:
                    found.append((f"{prefix}.{name}" if prefix else name, m, self.bits))
        if self.bi_head:
            found.append((head_name(model), head, 1))
        return found

    def apply(self, model: nn.Module, method: Method) -> None:
        matrices = self._matrices(model)
        if not [m for m in matrices if m[1] is not head_module(model)]:
            raise MethodError(f"quant=1bit quantises the weight matrices of a method's modules and method "
                              f"'{method.name}' inserts none (prompts, scales and biases are not matrices)")
        head = head_module(model)
        if self.bi_head and head.bias is not None:
            head.bias = None  # the code's Bi-Head is a bias-free 1-bit Linear
        covered = {id(m.weight) for _, m, _ in matrices}
        others = [n for n, p in model.named_parameters()
                  if p.requires_grad and id(p) not in covered and not any(p is q for q in head.parameters())]
        if others:
            raise MethodError(f"quant=1bit stores weight matrices in bits, and method '{method.name}' also trains "
                              f"{others[0]} (not a weight matrix); use a host without it (e.g. method.bias=false)")
        for _, module, bits in matrices:
            with torch.no_grad():
                if module.weight.device.type != "meta" and not module.weight.any():
                    nn.init.trunc_normal_(module.weight, std=0.001, a=-0.002, b=0.002)
            parametrize.register_parametrization(module, "weight", Quantise(bits))

    def stored(self, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = dict(state)
        for name, module, bits in self._matrices(model):
            latent = state.pop(f"{name}.parametrizations.weight.original")
            quantiser = module.parametrizations.weight[0]
            index, _, mu, sigma = quantiser.indices(latent)
            state[f"{name}.weight.bits"] = pack(index, bits)
            state[f"{name}.weight.mu"] = mu.float().reshape(())
            state[f"{name}.weight.sigma"] = sigma.float().reshape(())
        return state

    def restored(self, model: nn.Module, stored: dict[str, torch.Tensor], training: bool = False
                 ) -> dict[str, torch.Tensor]:
        state = dict(stored)
        for name, module, bits in self._matrices(model):
            if f"{name}.weight.bits" not in state:
                continue
            quantiser = module.parametrizations.weight[0]
            shape = module.parametrizations.weight.original.shape
            index = unpack(state.pop(f"{name}.weight.bits"), bits, shape.numel()).view(shape)
            weight = quantiser.dequantise(index, state.pop(f"{name}.weight.mu"), state.pop(f"{name}.weight.sigma"))
            if training:  # a latent to start from (init=run)
                state[f"{name}.parametrizations.weight.original"] = weight
            else:  # the deployed weight, exactly what training computed: a plain Linear holding it
                plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                  device=weight.device, dtype=weight.dtype)
                model.set_submodule(name, plain.requires_grad_(False))
                state[f"{name}.weight"] = weight
        return state

    def provenance(self) -> dict:
        return {"label": self.label, "bits": self.bits, "bi_head": self.bi_head}

    @torch.no_grad()
    def finalise(self, model: nn.Module) -> None:
        """The quantised weights baked in: each quantised Linear replaced by a plain one holding W_q (a bias-free
        head gets a zero bias, as timm's). New modules, not `remove_parametrizations`, which edits the parametrised
        class that copies of the model share."""
        for name, module, _ in self._matrices(model):
            plain = nn.Linear(module.in_features, module.out_features, bias=True if module is head_module(model)
                              else module.bias is not None, device=module.weight.device, dtype=module.weight.dtype)
            plain.weight.copy_(module.weight)
            if plain.bias is not None:
                plain.bias.copy_(module.bias if module.bias is not None else torch.zeros_like(plain.bias))
            plain.requires_grad_(False)
            model.set_submodule(name, plain)


def storage_bytes(out_features: int, in_features: int, bits: int) -> int:
    """The code's bytes for one quantised matrix: the packed indices and μ, σ as float32."""
    return -(-out_features * in_features * bits // 8) + 8


__all__ = ["OneBit", "Quantise", "codebook", "pack", "storage_bytes", "unpack"]
