"""The configs of AlphaDecay and LLR: the papers' defaults in one place, `.build(...)` makes the
controller.

    cfg = spectral_opt.AlphaDecayConfig()                       # ratio (0.6666, 3), every 500 steps
    optimizer = torch.optim.AdamW(cfg.param_groups(model, weight_decay=0.1), lr=1e-3)
    decay = cfg.build(optimizer, model)                         # base wd: the groups' 0.1

    cfg = spectral_opt.LayerwiseLRConfig()                      # ratio (1, 5), every 100 steps
    llr = cfg.build(optimizer, model, total_steps=10_000, scheduler=scheduler)  # base lr: the peak

AlphaDecay (arXiv 2506.14562): wd_i = interp(alpha_i, [alpha_min, alpha_max], [r_min wd, r_max wd]);
LLR ("One LR Doesn't Fit All"): lr_i = interp(alpha_i, [alpha_min, alpha_max], [r_min lr, r_max lr]).
Each field is the keyword argument of the same name of `AlphaDecay` / `LayerwiseLR`, with the same
default (a test compares them); the base weight decay / LR is read from the optimizer unless given.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from layerwise_core import LayerwiseConfig, module_param_groups
from spectral_opt.alphadecay import AlphaDecay
from spectral_opt.layerwise_lr import LayerwiseLR

__all__ = ["AlphaDecayConfig", "LayerwiseLRConfig"]

Fit = Literal["median", "goodness_of_fit", "fix_finger"]


class _SpectralConfig(LayerwiseConfig):
    """What both controllers share: the recompute period, the module choice and the power-law fit."""

    ratio: tuple[
        float, float
    ]  # (r_min, r_max): the lowest alpha gets r_min x base, the highest r_max
    interval: int = Field(ge=1)  # recompute at step 0 and whenever (step + 1) % interval == 0
    exclude_first_last: bool  # leave the first and the last candidate module untuned
    # regular expressions searched in module names: tune only matches / never matches
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_eigs: int = Field(50, ge=2)  # modules with fewer ESD eigenvalues (min(m, n)) stay untuned
    fit: Fit = "median"  # TempBalance's power-law fit of the ESD tail (`hill_alpha`)
    xmin_pos: float = Field(2.0, ge=1.0)  # median fit: x_min = lambda_i with i = int(N / xmin_pos)
    reference_quirks: bool = False  # the official fix-finger window (`hill_alpha`)

    @field_validator("fit", mode="before")
    @classmethod
    def _fit_alias(cls, value: Any) -> Any:
        # the official spellings "goodness-of-fit" / "fix-finger" name the same fits
        return value.replace("-", "_") if isinstance(value, str) else value

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """One param group per `nn.Linear` / `nn.Embedding` (the controller sets one value per
        module) and one for the rest (norms); each group has `params`, `param_names`,
        `module_name` and `weight_decay`: `weight_decay` when every parameter of the group is a
        matrix, else 0 (norms, and a Linear's group that holds a bias too)."""
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        groups = module_param_groups(model, module_types=(nn.Linear, nn.Embedding))
        for group in groups:
            matrices = all(p.dim() >= 2 for p in group["params"])
            group["weight_decay"] = float(weight_decay) if matrices else 0.0
        return groups

    def _controller_kwargs(self) -> dict[str, Any]:
        return dict(
            ratio=self.ratio,
            interval=self.interval,
            exclude_first_last=self.exclude_first_last,
            include=self.include,
            exclude=self.exclude,
            min_eigs=self.min_eigs,
            fit=self.fit,
            xmin_pos=self.xmin_pos,
            reference_quirks=self.reference_quirks,
        )


def _one_base(values: list[float], what: str, field: str, owner: str) -> float:
    """The single non-zero value of `values` (0 when all are 0); several: an error naming `field`."""
    distinct = sorted({v for v in values if v > 0})
    if len(distinct) > 1:
        shown = ", ".join(f"{v:g}" for v in distinct[:4])
        raise ValueError(
            f"{owner}.build: the optimizer's param groups have different {what}s ({shown}), so "
            f"the base {what} of the map is ambiguous (a loaded optimizer state, or groups built "
            f"by hand): set {owner}({field}=...) or build before loading the optimizer's state"
        )
    return distinct[0] if distinct else 0.0


class AlphaDecayConfig(_SpectralConfig):
    """AlphaDecay (He et al., arXiv 2506.14562): module-wise weight decay from ESD alphas,
    wd_i = interp(alpha_i, [alpha_min, alpha_max], [0.6666 wd, 3 wd]), every Linear except the
    first and the last, recomputed every 500 steps (the paper's settings)."""

    ratio: tuple[float, float] = (0.6666, 3.0)  # (r_min, r_max) x wd; heavier tail -> weaker decay
    interval: int = Field(500, ge=1)  # recompute period in optimizer steps
    exclude_first_last: bool = True  # layers.0.self_attn.q_proj and lm_head keep the base wd
    # the base wd of the map; None: the optimizer's (the one non-zero weight decay of its groups)
    weight_decay: float | None = Field(None, ge=0.0)

    @field_validator("ratio")
    @classmethod
    def _ratio_order(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (r_min, r_max) with 0 <= r_min <= r_max, got {ratio}")
        return ratio

    def build(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, *, scheduler: Any = None
    ) -> AlphaDecay:
        """`AlphaDecay(optimizer, model, weight_decay, ...)` with this config's settings.

        The base weight decay is `weight_decay`, or else the optimizer's: the largest weight decay
        of its param groups, which must be the only non-zero one (as from `param_groups`). Build
        before loading an optimizer state (a loaded state holds AlphaDecay's per-module values).
        `scheduler`: the LR scheduler already driving the optimizer, needed only when shared
        param groups are split (see `AlphaDecay`).
        """
        base = self.weight_decay
        if base is None:
            wds = [float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups]
            base = _one_base(wds, "weight decay", "weight_decay", type(self).__name__)
        return AlphaDecay(optimizer, model, base, scheduler=scheduler, **self._controller_kwargs())


class LayerwiseLRConfig(_SpectralConfig):
    """LLR ("One LR Doesn't Fit All: Heavy-Tail Guided Layerwise Learning Rates for LLMs"):
    lr_i = interp(alpha_i, [alpha_min, alpha_max], [1 lr, 5 lr]), recomputed every 100 steps during
    the first 20% of training, each new peak reached by a 50-step ramp (the papers' scripts)."""

    ratio: tuple[float, float] = (1.0, 5.0)  # (r_min, r_max) x lr; lighter tail -> larger LR
    interval: int = Field(100, ge=1)  # recompute period in optimizer steps
    active_fraction: float = Field(0.2, gt=0.0, le=1.0)  # adapt during this share of the run
    ramp_steps: int = Field(50, ge=0)  # linear ramp from the current peak LR to a new one
    # modules whose name contains one of these get alpha_max without estimation (the reference's)
    pinned: tuple[str, ...] = ("embed", "head")
    embed_lr: float | None = Field(None, gt=0.0)  # peak LR of the pinned modules; None: r_max x lr
    exclude_first_last: bool = False  # the reference tunes the first Linear too
    # the base (peak) LR of the map; None: the optimizer's (its groups' one peak LR)
    lr: float | None = Field(None, gt=0.0)

    @field_validator("ratio")
    @classmethod
    def _ratio_order(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (r_min, r_max) with 0 < r_min <= r_max, got {ratio}")
        return ratio

    def build(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        *,
        total_steps: int | None,
        scheduler: Any = None,
    ) -> LayerwiseLR:
        """`LayerwiseLR(optimizer, model, lr, ...)` with this config's settings.

        The base LR is `lr`, or else the optimizer's peak LR: the scheduler's `base_lrs` when a
        scheduler is given, else each group's `initial_lr` (or `lr`); all groups must share it.
        `total_steps`: the run's length in optimizer steps (None only with active_fraction=1).
        `scheduler`: the LR scheduler driving the optimizer (required when there is one: LLR sets
        the peaks it scales).
        """
        base = self.lr
        if base is None:
            from spectral_opt._controller import _unwrap_scheduler

            inner = _unwrap_scheduler(scheduler)
            peaks = (
                [float(v) for v in inner.base_lrs]
                if inner is not None
                else [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
            )
            base = _one_base(peaks, "peak learning rate", "lr", type(self).__name__)
        return LayerwiseLR(
            optimizer,
            model,
            base,
            active_fraction=self.active_fraction,
            total_steps=total_steps,
            ramp_steps=self.ramp_steps,
            scheduler=scheduler,
            pinned=self.pinned,
            embed_lr=self.embed_lr,
            **self._controller_kwargs(),
        )
