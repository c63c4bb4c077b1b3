"""What AlphaDecay and LayerwiseLR share: which modules are tuned, which param group holds each, when
alphas are recomputed, and the state that a checkpoint must carry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spectral_opt.hill_alpha import _normalise_fit
from spectral_opt.module_alphas import Patterns, alphas_of_modules, spectral_modules


def _type_names(module_types: tuple[type[nn.Module], ...]) -> str:
    return ", ".join(
        f"nn.{t.__name__}" if t.__module__.startswith("torch") else t.__name__ for t in module_types
    )


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
        candidates = spectral_modules(model, module_types, include, exclude)
        if exclude_first_last:
            candidates = candidates[1:-1]
        is_pinned = {n: any(p in n for p in pinned) for n, _ in candidates}
        candidates = [
            (n, m) for n, m in candidates if is_pinned[n] or min(m.weight.shape) >= min_eigs
        ]
        # modules outside the optimizer (frozen) are not tuned
        groups = self._group_index(candidates, module_types)
        self.pinned_modules = [n for n, _ in candidates if n in groups and is_pinned[n]]
        self._estimated = [(n, m) for n, m in candidates if n in groups and not is_pinned[n]]
        self.tuned_modules = [n for n, _ in self._estimated]
        self.group_of = {n: groups[n] for n in self.tuned_modules + self.pinned_modules}
        self.alphas: dict[str, float] = {}  # the latest alpha of each tuned module
        self.values: dict[str, float] = {}  # the latest hyper-parameter of each tuned module
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, alphas) per recompute
        self._step = 0  # optimizer steps taken so far (the index of the coming step)
        for group in optimizer.param_groups:
            if self.hyperparameter not in group:
                raise ValueError(
                    f"{type(optimizer).__name__} has no {self.hyperparameter!r} in its param "
                    f"groups; {type(self).__name__} sets it per module, so use an optimizer that "
                    f"has one (AdamW, Adam, SGD, ...)"
                )

    def _group_index(
        self, candidates: list[tuple[str, nn.Module]], module_types: tuple[type[nn.Module], ...]
    ) -> dict[str, int]:
        owner = {id(p): i for i, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        index = {}
        for name, module in candidates:
            gi = owner.get(id(module.weight))
            if gi is None:
                continue
            own = {id(p) for p in module.parameters(recurse=False)}
            others = [p for p in self.optimizer.param_groups[gi]["params"] if id(p) not in own]
            if others:
                raise ValueError(
                    f"param group {gi} holds {len(others)} parameter(s) of other modules besides "
                    f"{name!r}; {type(self).__name__} sets one {self.hyperparameter} per module, "
                    f"so build the optimizer from one group per module: "
                    f"spectral_opt.module_param_groups(model, module_types=("
                    f"{_type_names(module_types)},), ...)"
                )
            index[name] = gi
        return index

    def compute_alphas(self) -> dict[str, float]:
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

    def _record(self, t: int) -> dict[str, float]:
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
        self.alphas = {k: float(v) for k, v in state["alphas"].items()}
        self.values = {k: float(v) for k, v in state["values"].items()}
        self.history = [(int(t), {k: float(v) for k, v in a.items()}) for t, a in state["history"]]
