"""LLR: heavy-tail guided layer-wise (module-wise) learning rates.

"One LR Doesn't Fit All: Heavy-Tail Guided Layerwise Learning Rates for LLMs" (code:
github.com/hed-ucas/Layer-wise-Learning-Rate). During the first `active_fraction` of training,
at the first step and every `interval` steps, each tuned module's peak learning rate becomes

    lr_i = interp(alpha_i, [alpha_min, alpha_max], [r_min * lr, r_max * lr]),   (r_min, r_max) = (1, 5)

(lighter tail, i.e. higher alpha: larger LR). Modules whose name contains "embed" or "head" are not
estimated; they get alpha = alpha_max, hence r_max * lr (or `embed_lr` when given). Each new peak
is reached by a linear ramp over `ramp_steps` steps; after the active fraction the peaks freeze.

Composition with an LR schedule: the controller sets each group's *peak* LR and the schedule
scales it, lr_i(t) = peak_i(t) * m(t). Pass the scheduler (`LambdaLR` and every transformers
schedule): the controller rewrites its `base_lrs[i]` and the group's `initial_lr`, so the schedule
continues from the new peaks. Without a scheduler the group's `lr` is the peak itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spectral_opt._controller import SpectralController, _unwrap_scheduler
from spectral_opt.module_alphas import Patterns
from spectral_opt.temperature_balance import tb_linear_map

__all__ = ["LayerwiseLR"]


class LayerwiseLR(SpectralController):
    """Set each module's peak learning rate from its ESD alpha (LLR); works with any torch optimizer.

    Build the optimizer with one param group per module (`spectral_opt.module_param_groups(model,
    module_types=(nn.Linear, nn.Embedding))`; shared groups, e.g. `decay_param_groups`, are split,
    see `spectral_opt._controller`), then call `.step()` once per training step, before
    `optimizer.step()` (and before `scheduler.step()`). `skipped` lists the candidate modules left
    untuned and why.

    Args:
        optimizer: any `torch.optim.Optimizer` (AdamW, SPAM, Muon, ...).
        model: the model whose modules the groups hold (FSDP2-sharded or not).
        lr: the base (peak) learning rate of the map.
        ratio: (r_min, r_max): the lowest alpha gets r_min * lr, the highest r_max * lr.
        interval: recompute period in steps; recomputes at step 0 and when (step + 1) % interval == 0.
        active_fraction: recompute only while step + 1 <= active_fraction * total_steps; then freeze.
        total_steps: length of the run in optimizer steps (needed when active_fraction < 1).
        ramp_steps: steps of the linear ramp from the current peak to a new one (0 or 1: at once).
        scheduler: the LR scheduler driving the optimizer, if any (required when there is one).
        pinned: name substrings of modules that get alpha_max without estimation.
        embed_lr: peak LR of the pinned modules instead of r_max * lr.
        exclude_first_last: leave the first and the last module untuned (the reference: False).
        module_types, include, exclude: which modules are candidates (`spectral_modules`).
        min_eigs: estimated modules with fewer eigenvalues are left untuned (base LR).
        fit, xmin_pos, reference_quirks: the power-law fit (`hill_alpha`).
        dtype: precision of the ESD (float32; float64 on request).
    """

    hyperparameter = "lr"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        lr: float,
        ratio: tuple[float, float] = (1.0, 5.0),
        interval: int = 100,
        active_fraction: float = 0.2,
        total_steps: int | None = None,
        ramp_steps: int = 50,
        *,
        scheduler: Any = None,
        pinned: Sequence[str] = ("embed", "head"),
        embed_lr: float | None = None,
        exclude_first_last: bool = False,
        module_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding),
        include: Patterns = None,
        exclude: Patterns = None,
        min_eigs: int = 50,
        fit: str = "median",
        dtype: torch.dtype = torch.float32,
        xmin_pos: float = 2.0,
        reference_quirks: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (r_min, r_max) with 0 < r_min <= r_max, got {ratio}")
        if not 0 < active_fraction <= 1:
            raise ValueError(f"active_fraction must be in (0, 1], got {active_fraction}")
        if active_fraction < 1 and total_steps is None:
            raise ValueError(
                f"active_fraction={active_fraction} needs the run length: pass total_steps=... "
                "(or active_fraction=1.0 to keep adapting the LRs during the whole run)"
            )
        if ramp_steps < 0:
            raise ValueError(f"ramp_steps must be >= 0, got {ramp_steps}")
        if embed_lr is not None and embed_lr <= 0:
            raise ValueError(f"embed_lr must be > 0 when given, got {embed_lr}")
        self.lr = float(lr)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.active_fraction = float(active_fraction)
        self.total_steps = total_steps
        self.ramp_steps = int(ramp_steps)
        self.embed_lr = embed_lr
        self.scheduler = _unwrap_scheduler(scheduler)
        super().__init__(
            optimizer,
            model,
            interval=interval,
            module_types=module_types,
            include=include,
            exclude=exclude,
            exclude_first_last=exclude_first_last,
            pinned=pinned,
            min_eigs=min_eigs,
            fit=fit,
            dtype=dtype,
            xmin_pos=xmin_pos,
            reference_quirks=reference_quirks,
            scheduler=self.scheduler,
        )
        if self.scheduler is None and any("initial_lr" in g for g in optimizer.param_groups):
            raise ValueError(
                "the optimizer's param groups carry 'initial_lr', so an LR scheduler drives them; "
                "pass it: LayerwiseLR(..., scheduler=scheduler), so that LLR sets the peak LR the "
                "schedule scales (otherwise the schedule overwrites the per-module LRs)"
            )
        # the peak LR in force for each tuned group, and the ramp towards the latest targets
        self.peaks = {name: self._current_peak(self.group_of[name]) for name in self.group_of}
        self._ramp_from: dict[str, float] = {}
        self._ramp_start = -1

    def _current_peak(self, gi: int) -> float:
        if self.scheduler is not None:
            return float(self.scheduler.base_lrs[gi])
        return float(self.optimizer.param_groups[gi]["lr"])

    @property
    def last_update_step(self) -> int:
        """The last 0-based step at which alphas may be recomputed (inclusive)."""
        if self.active_fraction >= 1:
            return 2**62
        return int(self.active_fraction * self.total_steps) - 1

    def is_update_step(self, step: int) -> bool:
        return step <= self.last_update_step and super().is_update_step(step)

    def frozen(self, step: int | None = None) -> bool:
        """True once no recompute can happen any more (from step `last_update_step + 1` on)."""
        return (self._step if step is None else step) > self.last_update_step

    def _targets(self, alphas: dict[str, float]) -> dict[str, float]:
        if not alphas:
            return {}
        top = max(alphas.values())
        scored = {**alphas, **{name: top for name in self.pinned_modules}}
        targets = tb_linear_map(scored, self.lr, self.ratio)
        if self.embed_lr is not None:
            targets.update({name: float(self.embed_lr) for name in self.pinned_modules})
        return targets

    def _set_peak(self, name: str, peak: float) -> None:
        """Move group `name` to a new peak; the schedule multiplier m(t) = lr / old peak is kept."""
        gi = self.group_of[name]
        group = self.optimizer.param_groups[gi]
        old = self._current_peak(gi)
        factor = group["lr"] / old if old > 0 else 1.0
        group["lr"] = peak * factor
        if self.scheduler is not None:
            self.scheduler.base_lrs[gi] = peak
            group["initial_lr"] = peak
        self.peaks[name] = peak

    def _advance(self, t: int) -> bool:
        updated = self.is_update_step(t)
        if updated:
            self.values = self._targets(self._record(t))
            self._ramp_from = {name: self.peaks[name] for name in self.values}
            self._ramp_start = t
        k = t - self._ramp_start
        if self._ramp_start >= 0 and 0 <= k < max(1, self.ramp_steps):
            progress = min(1.0, (k + 1) / max(1, self.ramp_steps))
            for name, target in self.values.items():
                start = self._ramp_from[name]
                self._set_peak(name, start + (target - start) * progress)
        return updated

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            peaks=dict(self.peaks), ramp_from=dict(self._ramp_from), ramp_start=self._ramp_start
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._ramp_from = {k: float(v) for k, v in state["ramp_from"].items()}
        self._ramp_start = int(state["ramp_start"])
        for name, peak in state["peaks"].items():
            if name in self.group_of:
                self._set_peak(name, float(peak))
