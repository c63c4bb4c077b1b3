"""`AdamWConfig`: torch's AdamW (Loshchilov & Hutter, arXiv 1711.05101) as a layerwise config.

    m_t = b1 m_{t-1} + (1 - b1) g_t,   v_t = b2 v_{t-1} + (1 - b2) g_t^2
    theta_t = theta_{t-1} - lr * (m_hat_t / (sqrt(v_hat_t) + eps) + weight_decay * theta_{t-1})

The defaults are `torch.optim.AdamW`'s (a test keeps them equal); a run states its own values
(LLM pre-training usually takes betas (0.9, 0.95) and weight decay 0.1).

    groups = decay_param_groups(model, cfg.weight_decay)   # decay on matrices only
    optimizer = AdamWConfig(lr=3e-3, betas=(0.9, 0.95)).build(groups)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field

from layerwise_core.config import LayerwiseConfig

__all__ = ["AdamBetas", "AdamWConfig"]


def _betas_in_range(betas: tuple[float, float]) -> tuple[float, float]:
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(
            "Adam's betas are moment decay rates and must each be in [0, 1): use e.g. [0.9, 0.95]"
        )
    return betas


# (beta1, beta2) of an Adam-type optimizer, each in [0, 1)
AdamBetas = Annotated[tuple[float, float], AfterValidator(_betas_in_range)]


class AdamWConfig(LayerwiseConfig):
    """Hyper-parameters of `torch.optim.AdamW`; `build(param_groups)` makes the optimizer."""

    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)  # peak learning rate
    betas: AdamBetas = (0.9, 0.999)  # moment decay rates (b1, b2), each in [0, 1)
    eps: float = Field(1e-8, gt=0.0, allow_inf_nan=False)  # added to sqrt(v_hat)
    # decoupled weight decay; a param group's own "weight_decay" (e.g. 0 for norms) wins
    weight_decay: float = Field(0.01, ge=0.0, allow_inf_nan=False)

    def build(
        self,
        param_groups: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        *,
        total_steps: int | None = None,
    ) -> torch.optim.AdamW:
        """`torch.optim.AdamW(param_groups, lr, betas, eps, weight_decay)`; a param group's own
        values win over the config's. `total_steps` (the run's length) is unused: AdamW has no
        schedule of its own (the argument keeps `build` the same for every optimizer config)."""
        del total_steps
        return torch.optim.AdamW(
            param_groups,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
