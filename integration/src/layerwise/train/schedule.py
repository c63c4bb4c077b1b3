"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (times an optimizer's own
factor: LORO's restarts)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["warmup_cosine", "warmup_cosine_scheduler"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based):

        m(s) = (s + 1) / W                                          for s < W
        m(s) = r + (1 - r) * (1 + cos(pi * (s - W) / (S - W))) / 2    for W <= s

    with W warm-up steps, S total steps and floor ratio r; m reaches r at s = S.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    factor: Callable[[int], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_cosine` as a scheduler; with `factor`, the multiplier at step s is
    `warmup_cosine(s, ...) * factor(s)` (LORO: `LOROConfig.schedule_factor`, its re-warm-up after
    each exact step)."""
    if factor is None:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_lr_ratio)
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup_steps, total_steps, min_lr_ratio) * factor(s),
    )
