"""`memory=velora` — VeLoRA: memory-efficient training with rank-1 sub-token projections (Miles et al., NeurIPS 2024;
official code roymiles/VeLoRA; the same maths in HF peft's `tuners/lora/velora.py`).

A trainable linear op y = W x + b normally keeps its input x (B·N × D) for ∂L/∂W. VeLoRA cuts every token into G
contiguous sub-tokens of d = D/G values (the last one zero-padded, as peft, when G does not divide D), projects
each on one unit vector v ∈ R^d and keeps only z = S v (B·N·G values, a d-fold saving). The output and ∂L/∂x are
exact; the weight gradient comes from the reconstruction X̂ = z vᵀ:

    ∂L/∂W = velora_scale · gᵀ X̂,   ∂L/∂x = g W,   ∂L/∂b = Σ g.

v (a buffer, never trained): `batch_average_once` (the code's default) — the normalised mean of all sub-tokens of
the first training batch, then fixed; `batch_average` — re-estimated every training batch (peft's default);
`ema` — v ← normalise(decay · v + (1 − decay) · mean), as the code mixes them; `random` — the code's normalised
U[0, 1) vector (peft draws a Gaussian). In eval mode, or without gradients, the plain op runs.

Where (the paper's intended placements; the released ViT code runs fewer of them, see the reference): the input of
every LoRA A, of every adapter down-projection (`down` of a bottleneck or SPT branch), the qkv and fc2 inputs of full
fine-tuning, and SSF's γ after qkv and after fc1 (the first scale of the attention and of the MLP). A placement
saves memory only if no other autograd node keeps the same tensor: when the model is built (not on the meta
device), one probe step checks every wrapped op; a configuration where none saves anything stops with one line, and
the provenance records how many do (AdaptFormer's adapter reads the input of `norm2`, which LayerNorm keeps wherever
that input needs a gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method, MethodError, choice, head_module
from methods.layers import LoRALinear, ScaleShift, unwrapped
from methods.techniques import Technique
from methods.tuners import Tuner

INITS = ("batch_average_once", "batch_average", "ema", "random")


def _subtokens(x: torch.Tensor, groups: int) -> torch.Tensor:
    """T × D → T × G × d, contiguous chunks, the last zero-padded to G·d."""
    width = x.shape[-1]
    d = -(-width // groups)
    if d * groups != width:
        x = F.pad(x, (0, d * groups - width))
    return x.reshape(x.shape[0], groups, d)


def compress(x: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """z = S v: one value per sub-token (T × G)."""
    return _subtokens(x, groups) @ v.to(x.dtype)


def reconstruct(z: torch.Tensor, v: torch.Tensor, width: int) -> torch.Tensor:
    """X̂ = z vᵀ, T × D (padding removed)."""
    return (z[..., None] * v.to(z.dtype)).reshape(z.shape[0], -1)[:, :width]


class _LinearFn(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, v, groups, scale):
        out = F.linear(x, weight, bias)
        ctx.save_for_backward(compress(x.detach().reshape(-1, x.shape[-1]), v, groups), weight, v)
        ctx.shape, ctx.dtype, ctx.scale, ctx.has_bias = x.shape, x.dtype, scale, bias is not None
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        z, weight, v = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight.to(g.dtype)).reshape(ctx.shape).to(ctx.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (ctx.scale * g.t() @ reconstruct(z, v, ctx.shape[-1]).to(g.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class _ScaleShiftFn(torch.autograd.Function):
    """y ↦ γ ⊙ y + β on the last dimension, keeping z instead of y."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, y, gamma, beta, v, groups, scale):
        ctx.save_for_backward(compress(y.detach().reshape(-1, y.shape[-1]), v, groups), gamma, v)
        ctx.shape, ctx.dtype, ctx.scale = y.shape, y.dtype, scale
        return y * gamma + beta

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        z, gamma, v = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_y = (grad * gamma.to(grad.dtype)).to(ctx.dtype) if ctx.needs_input_grad[0] else None
        grad_gamma = (ctx.scale * (g * reconstruct(z, v, ctx.shape[-1]).to(g.dtype)).sum(0)).to(gamma.dtype)
        return grad_y, grad_gamma, g.sum(0).to(gamma.dtype), None, None, None


class _Projection(Tuner):
    """The shared part of a VeLoRA wrapper: the projection vector v and how it is initialised."""

    def __init__(self, base: nn.Module, width: int, groups: int, scale: float, init: str, ema_decay: float,
                 like: torch.Tensor):
        super().__init__(base)
        self.groups, self.scale, self.init, self.ema_decay = groups, scale, init, ema_decay
        d = -(-width // groups)
        v = torch.rand(d, device=like.device) if init == "random" else torch.zeros(d, device=like.device)
        self.register_buffer("velora_v", F.normalize(v, dim=0) if init == "random" else v)
        self.register_buffer("velora_ready", torch.tensor(init == "random", device=like.device))

    def compressing(self) -> bool:
        return self.active and self.training and torch.is_grad_enabled()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """v from this training batch, as `init` says."""
        if self.init == "random" or (self.init == "batch_average_once" and bool(self.velora_ready)):
            return
        mean = _subtokens(x.reshape(-1, x.shape[-1]).float(), self.groups).reshape(-1, self.velora_v.numel()).mean(0)
        if self.init == "ema" and bool(self.velora_ready):
            mean = self.ema_decay * self.velora_v + (1 - self.ema_decay) * mean
        norm = mean.norm()
        self.velora_v.copy_(mean / norm if norm > 0 else torch.full_like(mean, mean.numel() ** -0.5))
        self.velora_ready.fill_(True)


class VeLoRALinear(_Projection):
    """A Linear whose input is kept as its rank-1 sub-token projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compressing():
            return self.base(x)
        self.update(x)
        return _LinearFn.apply(x, self.base.weight, self.base.bias, self.velora_v, self.groups, self.scale)

    mergeable = True

    def merged(self) -> nn.Module:
        return self.base


class VeLoRAScaleShift(_Projection):
    """SSF's γ ⊙ y + β on a Linear's output y, keeping y as its projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ssf = self.base
        if not self.compressing() or not ssf.active:
            return ssf(x)
        y = ssf.base(x)
        self.update(y)
        return _ScaleShiftFn.apply(y, ssf.ssf_scale, ssf.ssf_shift, self.velora_v, self.groups, self.scale)

    mergeable = True

    def merged(self) -> nn.Module:
        return self.base


def targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of the ops VeLoRA compresses, by the role of each module (see the module docstring)."""
    head = {id(m) for m in head_module(model).modules()}
    found = []
    for name, m in model.named_modules():
        if id(m) in head or isinstance(m, _Projection):
            continue
        if isinstance(m, LoRALinear):
            found += [(f"{name}.lora_A.{i}", a, "linear") for i, a in enumerate(m.lora_A)]
        elif isinstance(m, nn.Linear) and m.weight.requires_grad and name.rsplit(".", 1)[-1] == "down":
            found.append((name, m, "linear"))
        elif isinstance(m, nn.Linear) and m.weight.requires_grad and name.endswith(("attn.qkv", "mlp.fc2")):
            found.append((name, m, "linear"))
        elif isinstance(m, ScaleShift) and name.endswith(("attn.qkv", "mlp.fc1")) and m.channel_dim == -1:
            found.append((name, m, "scale_shift"))
    return found


class VeLoRA(Technique):
    """Args:
    num_groups: G, sub-tokens per token (the code's 32).
    velora_scale: multiplies the weight gradient.
    init: batch_average_once | batch_average | ema | random (how v is set).
    ema_decay: for init=ema.
    """

    group = "memory"

    def __init__(self, num_groups: int = 32, velora_scale: float = 1.0, init: str = "batch_average_once",
                 ema_decay: float = 0.9, label: str = "velora"):
        super().__init__(label)
        if num_groups < 1 or velora_scale <= 0:
            raise MethodError(f"memory.num_groups={num_groups} must be ≥ 1 and memory.velora_scale={velora_scale} "
                              f"> 0")
        self.init = choice("init", init, INITS)
        self.num_groups, self.velora_scale, self.ema_decay = num_groups, velora_scale, ema_decay
        self.saving: dict = {}

    def apply(self, model: nn.Module, method: Method) -> None:
        found = targets(model)
        if not found:
            raise MethodError(f"memory=velora compresses the inputs of trainable linear ops and method "
                              f"'{method.name}' has none (LoRA A, adapter down-projections, full fine-tuning's "
                              f"qkv/fc2, SSF's γ after qkv/fc1)")
        wrappers = []
        for name, module, kind in found:
            inner = unwrapped(module)
            width = inner.in_features if kind == "linear" else inner.out_features
            cls = VeLoRALinear if kind == "linear" else VeLoRAScaleShift
            wrapper = cls(module, width, self.num_groups, self.velora_scale, self.init, self.ema_decay, inner.weight)
            model.set_submodule(name, wrapper)
            wrappers.append((name, wrapper))
        if wrappers[0][1].velora_v.device.type != "meta":
            self._check_saving(model, method, wrappers)

    def _check_saving(self, model: nn.Module, method: Method, wrappers: list[tuple[str, _Projection]]) -> None:
        """One probe step: which compressed tensors does another autograd node keep anyway?"""
        kept_inputs: dict[str, torch.Tensor] = {}
        saved: set[int] = set()

        def remember(name):
            def hook(module, args, output=None):
                t = args[0] if output is None else output
                kept_inputs[name] = t  # held, so its storage cannot be reused during the probe
            return hook

        handles = []
        for name, w in wrappers:
            if isinstance(w, VeLoRAScaleShift):
                handles.append(unwrapped(w.base).register_forward_hook(remember(name)))
            else:
                handles.append(w.register_forward_pre_hook(remember(name)))
        states = {name: (w.velora_v.clone(), w.velora_ready.clone()) for name, w in wrappers}
        ref = wrappers[0][1].velora_v
        size = getattr(getattr(model, "patch_embed", None), "img_size", None) or model.pretrained_cfg["input_size"][1:]
        was_training = model.training
        devices = [ref.device] if ref.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                model.train()
                x = torch.randn(2, 3, *size, device=ref.device)
                with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.add(t.untyped_storage().data_ptr()) or t,
                                                              lambda t: t):
                    model(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
            for name, w in wrappers:
                w.velora_v.copy_(states[name][0])
                w.velora_ready.copy_(states[name][1])
        idle = sorted(n for n, t in kept_inputs.items() if t.untyped_storage().data_ptr() in saved)
        if len(idle) == len(wrappers):
            raise MethodError(f"memory=velora would save no activation memory in method '{method.name}': another "
                              f"autograd node keeps every input it would compress (e.g. {idle[0]}); use another host")
        self.saving = {"wrapped": len(wrappers), "saving": len(wrappers) - len(idle), "kept_elsewhere": idle}

    def provenance(self) -> dict:
        return {"label": self.label, "num_groups": self.num_groups, "velora_scale": self.velora_scale,
                "init": self.init, **self.saving}


__all__ = ["VeLoRA", "VeLoRALinear", "VeLoRAScaleShift", "compress", "reconstruct", "targets"]
