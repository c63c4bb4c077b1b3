"""The divergence guard of the training loops: stop at the first NaN / inf loss or gradient norm.

A non-finite loss or gradient norm is checked *before* `optimizer.step()`, so the update that
would write NaN into the weights (and the optimizer's moments) never happens and no checkpoint of
that state is saved: the run's last checkpoint stays the last good one. The command exits with
status 3 (`layerwise: error: training diverged: ...`), distinct from a user error (2).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["DIVERGED_EXIT_STATUS", "TrainingDivergedError", "diverged", "divergence_error"]

DIVERGED_EXIT_STATUS = 3


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm of a training step is NaN or infinite."""


def diverged(loss: float | torch.Tensor, grad_norm: float | torch.Tensor) -> bool:
    """True when the loss or the gradient norm of a step is NaN or infinite."""
    return not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm)))


def divergence_error(
    step: int,
    loss: float | torch.Tensor,
    grad_norm: float | torch.Tensor,
    kept: Path | str | None,
    *,
    lr_field: str = "optimizer.lr",
    clip_field: str = "train.grad_clip",
) -> TrainingDivergedError:
    """The error for a diverged optimizer step `step` (1-based: the step that was not taken),
    naming the non-finite value, what is kept (the last good checkpoint folder, None for none, or
    a sentence) and what to try."""
    loss, grad_norm = float(loss), float(grad_norm)
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    if isinstance(kept, Path):
        kept = f"the last good checkpoint, {kept}, is intact"
    elif kept is None:
        kept = "no checkpoint was saved before it"
    return TrainingDivergedError(
        f"training diverged: the {what} is {value} at step {step}; that update was not applied "
        f"and nothing of it was saved ({kept}): lower {lr_field}, enable or tighten {clip_field}, "
        "or lengthen the warm-up, then start the run again"
    )
