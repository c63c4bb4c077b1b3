"""What AlphaDecay and LayerwiseLR share: which modules are tuned, which param group holds each, when
alphas are recomputed, and the state that a checkpoint must carry.

A controller sets one hyper-parameter per module, so each tuned module needs a param group of its
own. An optimizer built otherwise (`layerwise_core.decay_param_groups`, `model.parameters()`) has its
groups split at construction: each tuned module's parameters move to a new group that copies the
options of the group they came from (so biases and norms of `decay_param_groups` keep no decay);
the optimizer state, kept per parameter, is untouched; an LR scheduler passed as `scheduler=` gets
its per-group lists extended for the new groups.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spectral_opt.hill_alpha import _normalise_fit
from spectral_opt.module_alphas import (
    ModuleAlphas,
    Patterns,
    _too_small,
    alphas_of_modules,
    spectral_modules,
)

# per-param-group lists of torch LR schedulers (LambdaLR, MultiplicativeLR, CyclicLR,
# ReduceLROnPlateau, and every chainable one through base_lrs / _last_lr)
_SCHEDULER_LISTS = ("base_lrs", "_last_lr", "lr_lambdas", "max_lrs", "min_lrs")


def _unwrap_scheduler(scheduler: Any) -> Any:
    # accelerate's AcceleratedScheduler keeps the torch scheduler in `.scheduler`
    while scheduler is not None and not hasattr(scheduler, "base_lrs"):
        inner = getattr(scheduler, "scheduler", None)
        if inner is None:
            raise TypeError(
                f"{type(scheduler).__name__} has no `base_lrs`; pass a torch LRScheduler "
                "(LambdaLR, or any transformers get_*_schedule)"
            )
        scheduler = inner
    return scheduler


def _extend_scheduler(scheduler: Any, parents: list[int]) -> None:
    """New param groups i = n, n+1, ... follow the schedule of their parent groups."""
    for inner in [scheduler, *getattr(scheduler, "_schedulers", [])]:
        for attr in _SCHEDULER_LISTS:
            values = getattr(inner, attr, None)
            if isinstance(values, list):
                values.extend(values[p] for p in parents)


class SpectralController:
    """Base class: maps each tuned module to the one param group that holds its parameters."""

    hyperparameter: str  # the param-group key the controller sets

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        *,
        interval: int,
        module_types: tuple[type[nn.Module], ...],
        include: Patterns,
        exclude: Patterns,
        exclude_first_last: bool,
        pinned: Sequence[str],
        min_eigs: int,
        fit: str,
        dtype: torch.dtype,
        xmin_pos: float,
        reference_quirks: bool,
        scheduler: Any = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1 step, got {interval}")
        if min_eigs < 2:
            raise ValueError(f"min_eigs must be >= 2 (a power law needs a tail), got {min_eigs}")
        self.optimizer = optimizer
        self.model = model
        self.interval = interval
        self.fit = _normalise_fit(fit)
        self.min_eigs = min_eigs
        self.dtype = dtype
        self.xmin_pos = xmin_pos
        self.reference_quirks = reference_quirks
        # every candidate module that is not tuned, and why (`skipped`)
        self.skipped: dict[str, str] = {}
        candidates = spectral_modules(model, module_types, include, exclude)
        if exclude_first_last:
            for name, _ in candidates[:1] + candidates[-1:]:
                self.skipped[name] = "the first or last module (exclude_first_last=True)"
            candidates = candidates[1:-1]
        is_pinned = {n: any(p in n for p in pinned) for n, _ in candidates}
        for name, module in candidates:
            if not is_pinned[name] and min(module.weight.shape) < min_eigs:
                self.skipped[name] = _too_small(module.weight.shape, min_eigs)
        candidates = [(n, m) for n, m in candidates if n not in self.skipped]
        for group in optimizer.param_groups:
            if self.hyperparameter not in group:
                raise ValueError(
                    f"{type(optimizer).__name__} has no {self.hyperparameter!r} in its param "
                    f"groups; {type(self).__name__} sets it per module, so use an optimizer that "
                    f"has one (AdamW, Adam, SGD, ...)"
                )
        # modules outside the optimizer (frozen) are not tuned
        self.split_modules: list[str] = []  # modules moved into a param group of their own
        groups = self._own_groups(candidates, scheduler)
        for name, _ in candidates:
            if name not in groups:
                self.skipped[name] = "its weight is in no param group (frozen or not optimized)"
        self.pinned_modules = [n for n, _ in candidates if n in groups and is_pinned[n]]
        self._estimated = [(n, m) for n, m in candidates if n in groups and not is_pinned[n]]
        self.tuned_modules = [n for n, _ in self._estimated]
        self.group_of = {n: groups[n] for n in self.tuned_modules + self.pinned_modules}
        if not self.group_of:
            listed = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:4])
            warnings.warn(
                f"{type(self).__name__} tunes no module ({len(self.skipped)} skipped: {listed}); "
                "check module_types, include / exclude and min_eigs",
                stacklevel=3,
            )
        # the latest alpha of each tuned module; `.skipped` lists fits that were not finite
        self.alphas: ModuleAlphas = ModuleAlphas()
        self.values: dict[str, float] = {}  # the latest hyper-parameter of each tuned module
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, alphas) per recompute
        self._step = 0  # optimizer steps taken so far (the index of the coming step)

    def _own_groups(
        self, candidates: list[tuple[str, nn.Module]], scheduler: Any
    ) -> dict[str, int]:
        """{module name: index of its own param group}, splitting shared groups (module docstring)."""
        groups = self.optimizer.param_groups
        owner = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
        index, moves = {}, []
        for name, module in candidates:
            gi = owner.get(id(module.weight))
            if gi is None:
                continue
            own = {id(p) for p in module.parameters(recurse=False) if owner.get(id(p)) == gi}
            if any(id(p) not in own for p in groups[gi]["params"]):
                moves.append((name, gi, own))
            else:
                index[name] = gi
        if not moves:
            return index
        scheduler = _unwrap_scheduler(scheduler)
        if scheduler is None and any("initial_lr" in g for g in groups):
            raise ValueError(
                f"{type(self).__name__} sets one {self.hyperparameter} per module, so it gives "
                f"{len(moves)} modules that share param groups a group of their own, but an LR "
                "scheduler already drives these groups: pass it (scheduler=scheduler) so that the "
                "new groups follow the schedule, or build the optimizer from one group per module "
                "(spectral_opt.module_param_groups(model, ...)) or before the scheduler"
            )
        parents = []
        for name, gi, own in moves:
            group = groups[gi]
            moved = [i for i, p in enumerate(group["params"]) if id(p) in own]
            kept = [i for i, p in enumerate(group["params"]) if id(p) not in own]
            new = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            new["params"] = [group["params"][i] for i in moved]
            new["module_name"] = name
            if "param_names" in group:
                new["param_names"] = [group["param_names"][i] for i in moved]
                group["param_names"] = [group["param_names"][i] for i in kept]
            group["params"] = [group["params"][i] for i in kept]
            self.optimizer.add_param_group(new)
            index[name] = len(groups) - 1
            parents.append(gi)
            self.split_modules.append(name)
        if scheduler is not None:
            _extend_scheduler(scheduler, parents)
        return index

    def compute_alphas(self) -> ModuleAlphas:
        """alpha of every tuned module now (collective under torch.distributed)."""
        return alphas_of_modules(
            self._estimated,
            self.min_eigs,
            self.fit,
            self.dtype,
            self.xmin_pos,
            reference_quirks=self.reference_quirks,
        )

    def is_update_step(self, step: int) -> bool:
        """Recompute at the first step and whenever (step + 1) % interval == 0 (0-based steps)."""
        return step == 0 or (step + 1) % self.interval == 0

    def step(self, step: int | None = None) -> bool:
        """Call once per training step, before `optimizer.step()`. Returns True if alphas were
        recomputed. `step` (0-based optimizer step) overrides the internal counter, e.g. to follow
        a trainer's global step."""
        t = self._step if step is None else int(step)
        updated = self._advance(t)
        self._step = t + 1
        return updated

    def _advance(self, t: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, t: int) -> ModuleAlphas:
        alphas = self.compute_alphas()
        self.alphas = alphas
        self.history.append((t, dict(alphas)))
        return alphas

    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-serialisable) state: step counter, alphas, values, history."""
        return {
            "step": self._step,
            "alphas": dict(self.alphas),
            "values": dict(self.values),
            "history": [[t, dict(a)] for t, a in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` and write the restored per-module values into the param groups."""
        missing = set(state["values"]) - set(self.group_of)
        if missing:
            raise ValueError(
                f"the saved state tunes modules this {type(self).__name__} does not: "
                f"{sorted(missing)[:5]}; build it with the same model and arguments"
            )
        self._step = int(state["step"])
        self.alphas = ModuleAlphas({k: float(v) for k, v in state["alphas"].items()})
        self.values = {k: float(v) for k, v in state["values"].items()}
        self.history = [(int(t), {k: float(v) for k, v in a.items()}) for t, a in state["history"]]
