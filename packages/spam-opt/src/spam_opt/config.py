"""The configs of SPAM and Stable-SPAM: every hyper-parameter with the paper's default, `.build(...)`
makes the optimizer.

    groups = layerwise_core.decay_param_groups(model, weight_decay=0.1)   # "param_names" inside
    opt = SPAMConfig(density=0.25).build(groups)            # sparse momentum on attention / MLP
    opt = StableSPAMConfig(lr=4e-4, reset_interval=500).build(groups, total_steps=20_000)

Each field is the constructor argument of the same name of `SPAM` / `StableSPAM`, with the same
default (a test compares them; the constructors' docstrings say what each one does). The config
accepts exactly what the constructor accepts, and is stricter where a run config should be: a
finite learning rate above 0, a finite eps above 0, finite weight decay and thresholds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field, model_validator

from layerwise_core import AdamBetas, LayerwiseConfig
from spam_opt.spam import SPAM
from spam_opt.spam import _check_hyperparameters as _check_spam
from spam_opt.stable_spam import StableSPAM, check_gamma1
from spam_opt.stable_spam import _check_hyperparameters as _check_stable_spam

__all__ = ["SPARSE_MOMENTUM_PATTERN", "SPAMConfig", "StableSPAMConfig", "sparse_momentum_groups"]

# SPAM's sparse momentum goes to the attention and MLP matrices (as in the reference runs): the
# parameters whose name contains `self_attn.` or `mlp.` and that have two or more dimensions.
SPARSE_MOMENTUM_PATTERN = r"(self_attn|mlp)\."

ParamGroups = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
LearningRate = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Epsilon = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
WeightDecay = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Steps = Annotated[int, Field(ge=0)]
Decay = Annotated[float, Field(ge=0.0, lt=1.0)]
Gamma1 = Annotated[float, AfterValidator(check_gamma1)]


def sparse_momentum_groups(
    param_groups: Iterable[dict[str, Any]], density: float, pattern: str = SPARSE_MOMENTUM_PATTERN
) -> list[dict[str, Any]]:
    """Split each param group into its attention / MLP matrices, with `density`, and the rest.

    A parameter goes to the sparse-momentum part when its name (the group's "param_names", as
    `layerwise_core.decay_param_groups` gives them) matches `pattern` and it has two or more
    dimensions; the parts keep every other key of their group (weight decay, lr, ...), the sparse
    part first, and empty parts are dropped. `density >= 1` returns the groups unchanged.
    """
    groups = [dict(g) for g in param_groups]
    if density >= 1.0:
        return groups
    regex = re.compile(pattern)
    out = []
    for i, group in enumerate(groups):
        params = list(group["params"])
        names = group.get("param_names")
        if names is None or len(names) != len(params):
            raise ValueError(
                f"sparse momentum (density={density}) picks the attention / MLP matrices by name, "
                f"but param group {i} has no 'param_names' for its {len(params)} parameters: "
                "build the groups with layerwise_core.decay_param_groups (or add 'param_names')"
            )
        pairs = list(zip(names, params))
        sparse = [(n, p) for n, p in pairs if regex.search(n) and p.dim() >= 2]
        dense = [(n, p) for n, p in pairs if not (regex.search(n) and p.dim() >= 2)]
        for chosen, extra in ((sparse, {"density": density}), (dense, {})):
            if chosen:
                out.append(
                    {
                        **group,
                        "params": [p for _, p in chosen],
                        "param_names": [n for n, _ in chosen],
                        **extra,
                    }
                )
    return out


def _accepted_by(check, fields: dict[str, Any]) -> None:
    """Run the optimizer's own check of its hyper-parameters; its error becomes a field error."""
    try:
        check(fields)
    except (ValueError, RuntimeError) as err:
        raise ValueError(str(err)) from None


class SPAMConfig(LayerwiseConfig):
    """SPAM (Huang et al., ICLR 2025): spike-aware Adam with momentum reset; the paper's defaults.

    `build(param_groups)` makes `spam_opt.SPAM`; with `density < 1` it first moves the groups'
    attention / MLP matrices into sparse-momentum groups (`sparse_momentum_groups`).
    """

    lr: LearningRate = 1e-3  # learning rate
    betas: AdamBetas = (0.9, 0.999)  # Adam's (b1, b2), each in [0, 1)
    eps: Epsilon = 1e-6  # added to sqrt(v) (the official code's value)
    # decoupled, after the update; a param group's own "weight_decay" (e.g. 0 for norms) wins
    weight_decay: WeightDecay = 0.0
    warmup_steps: Steps = 150  # N: cosine warm-up of the step after each momentum reset
    # theta: g is a spike where g^2 > theta v, clipped to sign(g) sqrt(theta v); 0: no clipping
    threshold: float = Field(5000.0, ge=0.0, allow_inf_nan=False)
    reset_interval: Steps = 500  # dT: updates between momentum resets; 0 never resets
    clip_delay: Steps = 20  # A: no clipping in the first A updates and after each reset
    # < 1: moments on this random fraction of each attention / MLP matrix, redrawn every dT
    density: float = Field(1.0, gt=0.0, le=1.0)
    reference_quirks: bool = False  # reproduce the official code bit for bit (see the README)
    foreach: bool | None = None  # the multi-tensor path; None: the default path
    fused: bool | None = None  # the fused Triton step; None: on CUDA when triton is installed

    @model_validator(mode="after")
    def _accepted_by_spam(self) -> SPAMConfig:
        _accepted_by(_check_spam, self._fields())
        return self

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SPAMConfig.model_fields}

    def build(self, param_groups: ParamGroups, *, total_steps: int | None = None) -> SPAM:
        """`SPAM(param_groups, lr=..., ...)` with every field of this config.

        `param_groups`: parameters or param groups (dicts with "params" and, for `density < 1`,
        "param_names", as from `layerwise_core.decay_param_groups`); a group's own values win
        over the config's. `total_steps`: the run's length; SPAM has no schedule over the whole
        run and ignores it (the argument keeps `build` the same for every optimizer config).
        """
        del total_steps
        if self.density < 1.0:
            param_groups = sparse_momentum_groups(_as_groups(param_groups), self.density)
        return SPAM(
            param_groups,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            threshold=self.threshold,
            reset_interval=self.reset_interval,
            clip_delay=self.clip_delay,
            reference_quirks=self.reference_quirks,
            foreach=self.foreach,
            fused=self.fused,
        )


class StableSPAMConfig(LayerwiseConfig):
    """Stable-SPAM (Huang et al. 2025): Adam with AdaClip, AdaGN and momentum reset; the paper's
    defaults. `build(param_groups, total_steps=...)` makes `spam_opt.StableSPAM`."""

    lr: LearningRate = 1e-3  # learning rate
    betas: AdamBetas = (0.9, 0.999)  # Adam's (b1, b2); b1 is scaled by the cosine s(t)
    eps: Epsilon = 1e-8  # added to the denominators of Adam and AdaGN
    # decoupled, before the update; a param group's own "weight_decay" (e.g. 0 for norms) wins
    weight_decay: WeightDecay = 0.0
    gamma1: Gamma1 = 0.7  # AdaGN: EMA coefficient of ||g|| (times s(t)), in [0, 1); -1: betas[0]
    gamma2: Decay = 0.9  # AdaGN: EMA coefficient of ||g||^2
    gamma3: Decay = 0.999  # AdaClip: EMA coefficient of max|g|
    # T_total of the cosine on b1 (and g1); None: the `total_steps` given to build (the run's
    # length), and no cosine when build gets none either
    total_steps: int | None = Field(None, ge=1)
    eta_min: float = Field(0.5, ge=0.0, le=1.0)  # the cosine's final value
    reset_interval: Steps = 1000  # dT: updates between momentum resets; 0 never resets
    reference_quirks: bool = False  # reproduce the official code bit for bit (see the README)
    foreach: bool | None = None  # the multi-tensor path; None: the default path
    fused: bool | None = None  # the fused Triton step; None: on CUDA when triton is installed

    @model_validator(mode="after")
    def _accepted_by_stable_spam(self) -> StableSPAMConfig:
        _accepted_by(_check_stable_spam, self._fields())
        return self

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in StableSPAMConfig.model_fields}

    def build(self, param_groups: ParamGroups, *, total_steps: int | None = None) -> StableSPAM:
        """`StableSPAM(param_groups, lr=..., ...)` with every field of this config.

        `param_groups`: parameters or param groups (a group's own values win over the config's).
        `total_steps`: the run's length in updates, the cosine's T_total unless the field
        `total_steps` is set.
        """
        return StableSPAM(
            param_groups,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
            gamma1=self.gamma1,
            gamma2=self.gamma2,
            gamma3=self.gamma3,
            total_steps=self.total_steps if self.total_steps is not None else total_steps,
            eta_min=self.eta_min,
            reset_interval=self.reset_interval,
            reference_quirks=self.reference_quirks,
            foreach=self.foreach,
            fused=self.fused,
        )


def _as_groups(param_groups: ParamGroups) -> list[dict[str, Any]]:
    groups = list(param_groups)
    if groups and not all(isinstance(g, dict) for g in groups):
        raise ValueError(
            "sparse momentum (density < 1) picks the attention / MLP matrices by name: pass param "
            "groups with 'param_names' (layerwise_core.decay_param_groups(model, weight_decay)), "
            "not bare parameters"
        )
    return groups
