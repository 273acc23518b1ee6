"""What a run reports: parameter counts, compute, memory, provenance. Each measured in one place."""

from __future__ import annotations

import platform
import resource
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import metadata

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from methods.base import head_parameter_ids
from runners.config import PROJECT_ROOT


@dataclass(frozen=True)
class ParamCounts:
    """Trainable parameters without and with the task head, and all parameters of the tuned model.

    Papers differ on which they print (SSF includes the head, NOAH/SCT/DyT exclude it): report both.
    """

    trainable_without_head: int
    trainable_with_head: int
    total: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(model: nn.Module) -> ParamCounts:
    head = head_parameter_ids(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with_head = sum(p.numel() for p in trainable)
    in_head = sum(p.numel() for p in trainable if id(p) in head)
    return ParamCounts(with_head - in_head, with_head, sum(p.numel() for p in model.parameters()))


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel SDPA dispatches to: count it alike.
_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def gmacs_per_image(model: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[float, int]:
    """Multiply-accumulates per image, in G — the papers' (fvcore's) "GFLOPs" — averaged over `batches`.

    The model runs as given (pass it merged where the method merges) in eval mode on real images, so compute
    that depends on the image (a token dispatcher) is counted as it happens; returns (mean, images counted).
    torch's FlopCounterMode counts 2 FLOPs per multiply-add (ViT-B/16 at 224²: 35.13 G), so this is half its
    total per image (17.56 G).
    """
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval().requires_grad_(False)  # FlopCounterMode's module tracker rejects no-grad views of trainable tensors
    images = 0
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            for x in batches:
                model(x)
                images += len(x)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    if not images:
        raise ValueError("no images to count FLOPs on")
    return counter.get_total_flops() / 2e9 / images, images


def gmacs_at_size(model: nn.Module, image_size: int, device: torch.device | str = "meta") -> float:
    """`gmacs_per_image` of one blank image (on the meta device no weights are needed): the planning count for
    a model whose compute does not depend on the image."""
    return gmacs_per_image(model, [torch.zeros(1, 3, image_size, image_size, device=device)])[0]


def reset_peak_memory(device: torch.device) -> None:
    """Start the CUDA peak from here (the CPU peak RSS is the process's and cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB and what it measures: CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("vpeft", "torch", "timm", "hydra-core", "omegaconf", "numpy", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["cuda"] = torch.version.cuda or "none"
    return versions
