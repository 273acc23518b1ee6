"""Learning-rate schedules, stepped every iteration."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler


def cosine_with_warmup(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                       warmup_epochs: float, warmup_lr: float, min_lr: float,
                       cooldown_epochs: float = 0) -> CosineLRScheduler:
    """Linear warm-up from `warmup_lr` over `warmup_epochs`, cosine decay to `min_lr` at the end of
    `epochs − cooldown_epochs`, then `min_lr` (timm's cool-down: SSF runs 100 + 10 epochs).

    As NOAH and SSF configure timm (warm-up overlaps the start of the cosine), but per iteration:
    call `step_update(global_step)` before each optimizer step.
    """
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, round(steps_per_epoch * (epochs - cooldown_epochs))),
        lr_min=min_lr,
        warmup_t=round(steps_per_epoch * warmup_epochs),
        warmup_lr_init=warmup_lr,
        t_in_epochs=False,
    )
