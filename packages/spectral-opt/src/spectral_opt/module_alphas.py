"""alpha of every weight matrix of a model, batched by shape, FSDP2-aware.

The fast recipe: group matrices by shape (a wide matrix is transposed, so gate/up (I x d) and down
(d x I) projections share a group), stack a group in chunks, form the Gram matrices on the smaller
side, run one batched `eigvalsh`, fit all spectra at once with the vectorised Hill estimator.

With FSDP2 (DTensor parameters) every process gathers each full matrix (`DTensor.full_tensor`, a
collective, so all processes walk the modules in the same order), keeps only the matrices it owns
(the work is split across processes by cost), and the alphas are all-gathered: every process
returns the same dictionary, so all apply identical hyper-parameters.

Nothing is left out silently: the result is a `ModuleAlphas` dict whose `skipped` maps every
matrix without an alpha to the reason (too few eigenvalues for the fit, a non-finite fit, a module
type outside `module_types`, a name outside `include` / inside `exclude`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from layerwise_core import full_tensor, get_rank, get_world_size
from spectral_opt.esd import esd_float64
from spectral_opt.hill_alpha import fit_power_law

__all__ = [
    "ModuleAlphas",
    "alphas_of_modules",
    "module_alphas",
    "spectral_modules",
    "weight_alphas",
]

Patterns = str | Sequence[str] | None
_CHUNK_BYTES = 256 << 20  # stacked weights per batched eigvalsh call


class ModuleAlphas(dict[str, float]):
    """{name: alpha} of the matrices that have one, and `skipped`: {name: why it has none}."""

    def __init__(
        self, alphas: Mapping[str, float] | Iterable[tuple[str, float]] = (), skipped=None
    ) -> None:
        super().__init__(alphas)
        self.skipped: dict[str, str] = dict(skipped or {})

    def __repr__(self) -> str:
        return f"ModuleAlphas({dict.__repr__(self)}, skipped={self.skipped!r})"


def _too_small(shape: Iterable[int], min_eigs: int) -> str:
    return f"min(m, n) = {min(shape)} < min_eigs = {min_eigs}: too few eigenvalues to fit a tail"


def _compile(patterns: Patterns) -> list[re.Pattern[str]] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def spectral_modules(
    model: nn.Module,
    module_types: tuple[type[nn.Module], ...] = (nn.Linear,),
    include: Patterns = None,
    exclude: Patterns = None,
) -> list[tuple[str, nn.Module]]:
    """Modules of `module_types` with a 2-D `weight`, in `named_modules` order.

    `include` / `exclude`: regular expressions searched in the module name (`re.search`); a module
    is kept if it matches some `include` pattern (all do when None) and no `exclude` pattern.
    """
    inc, exc = _compile(include), _compile(exclude)
    found = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, module_types) or weight is None or weight.dim() != 2:
            continue
        if inc is not None and not any(p.search(name) for p in inc):
            continue
        if exc is not None and any(p.search(name) for p in exc):
            continue
        found.append((name, module))
    return found


def _tall_shape(shape: Iterable[int]) -> tuple[int, int]:
    m, n = shape
    return (m, n) if m >= n else (n, m)


@torch.no_grad()
def weight_alphas(
    weights: Mapping[str, torch.Tensor],
    fit: str = "median",
    dtype: torch.dtype = torch.float32,
    min_eigs: int = 50,
    xmin_pos: float = 2.0,
    bins: int = 100,
    reference_quirks: bool = False,
    chunk_bytes: int = _CHUNK_BYTES,
) -> ModuleAlphas:
    """alpha of each named 2-D matrix (plain tensors), computed in batches of equal shape.

    Matrices with N = min(m, n) < `min_eigs` (their alpha is unstable) and matrices whose fit is
    not finite (e.g. an all-zero matrix) are left out, with the reason in `.skipped`.
    Gram + `eigvalsh` in `dtype` (float32 default, float64 on request) on the matrices' device;
    in float32 a matrix whose eigenvalues read by the fit are below float32's resolution
    (N lambda_max / 2^20) is recomputed in float64 (`batched_esd(accurate_from=...)`), so every fit
    gives the float64 alpha (to ~1e-4) at float32 speed where float32 suffices.
    """
    skipped: dict[str, str] = {}
    groups: dict[tuple[torch.device, tuple[int, int]], list[str]] = {}
    for name, w in weights.items():
        if w.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(w.shape)}")
        if w.is_meta:
            raise ValueError(f"{name} lives on the meta device; materialise the model first")
        if min(w.shape) >= min_eigs:
            groups.setdefault((w.device, _tall_shape(w.shape)), []).append(name)
        else:
            skipped[name] = _too_small(w.shape, min_eigs)
    alphas: dict[str, float] = {}
    for (_, (m, n)), names in groups.items():
        # the eigenvalues the fit reads: the median fit the tail from x_min = lambda_i up, the
        # scanning fits every one (fix_finger's histogram starts at the smallest)
        median = fit == "median" and xmin_pos >= 1  # (a bad xmin_pos: fit_power_law says so)
        accurate_from = min(int(n / xmin_pos), n - 1) if median else 0
        per_chunk = max(1, chunk_bytes // (m * n * torch.finfo(dtype).bits // 8))
        for start in range(0, len(names), per_chunk):
            chunk = names[start : start + per_chunk]
            stack = torch.stack(
                [
                    weights[k].detach().to(dtype)
                    if weights[k].shape[0] >= weights[k].shape[1]
                    else weights[k].detach().to(dtype).mT
                    for k in chunk
                ]
            )
            eigs = esd_float64(stack, dtype, accurate_from)
            result = fit_power_law(eigs, fit, xmin_pos, bins, reference_quirks)
            for name, alpha in zip(chunk, result.alpha.tolist()):
                if math.isfinite(alpha):
                    alphas[name] = alpha
                else:
                    skipped[name] = (
                        f"the power-law fit is not finite ({alpha}): a zero or degenerate spectrum"
                    )
            del stack
    return ModuleAlphas(
        {name: alphas[name] for name in weights if name in alphas},
        {name: skipped[name] for name in weights if name in skipped},
    )


def _owners(shapes: list[tuple[int, int]], world: int) -> list[int]:
    """Greedy longest-processing-time split of the matrices over `world` processes (deterministic)."""
    cost = [m * n * min(m, n) for m, n in shapes]
    load = [0] * world
    owner = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-cost[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += cost[i]
    return owner


@torch.no_grad()
def alphas_of_modules(
    modules: Sequence[tuple[str, nn.Module]],
    min_eigs: int = 50,
    fit: str = "median",
    dtype: torch.dtype = torch.float32,
    xmin_pos: float = 2.0,
    bins: int = 100,
    reference_quirks: bool = False,
) -> ModuleAlphas:
    """{name: alpha} of the `weight` of each (name, module) with min(m, n) >= `min_eigs`; the
    others, and non-finite fits, are in `.skipped` with the reason.

    Collective under torch.distributed: every process must call it with the same modules.
    """
    selected = [(name, m.weight) for name, m in modules if min(m.weight.shape) >= min_eigs]
    too_small = {
        name: _too_small(m.weight.shape, min_eigs)
        for name, m in modules
        if min(m.weight.shape) < min_eigs
    }
    kwargs = dict(
        fit=fit,
        dtype=dtype,
        min_eigs=min_eigs,
        xmin_pos=xmin_pos,
        bins=bins,
        reference_quirks=reference_quirks,
    )
    world = get_world_size()
    if world == 1:
        result = weight_alphas({name: full_tensor(w.detach()) for name, w in selected}, **kwargs)
        return ModuleAlphas(result, {**too_small, **result.skipped})
    rank = get_rank()
    owner = _owners([tuple(w.shape) for _, w in selected], world)
    mine = ModuleAlphas()
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, (_, w) in enumerate(selected):
        by_shape.setdefault(_tall_shape(w.shape), []).append(i)
    for indices in by_shape.values():  # one shape at a time bounds the gathered memory
        owned = {}
        for i in indices:
            name, w = selected[i]
            full = full_tensor(w.detach())  # collective for DTensors: every process calls it
            if owner[i] == rank:
                owned[name] = full
        part = weight_alphas(owned, **kwargs)
        mine.update(part)
        mine.skipped.update(part.skipped)
    everyone: list[tuple[dict[str, float], dict[str, str]] | None] = [None] * world
    dist.all_gather_object(everyone, (dict(mine), mine.skipped))
    merged = {k: v for part in everyone for k, v in (part[0] if part else {}).items()}
    failed = {k: v for part in everyone for k, v in (part[1] if part else {}).items()}
    return ModuleAlphas(
        {name: merged[name] for name, _ in selected if name in merged},
        {**too_small, **failed},
    )


def module_alphas(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    min_eigs: int = 50,
    fit: str = "median",
    dtype: torch.dtype = torch.float32,
    module_types: tuple[type[nn.Module], ...] = (nn.Linear,),
    xmin_pos: float = 2.0,
    bins: int = 100,
    reference_quirks: bool = False,
) -> ModuleAlphas:
    """{module name: alpha} for every selected module with min(m, n) >= `min_eigs`.

    alpha is the Hill exponent of the ESD tail of the module's weight (see `hill_alpha`); modules
    are chosen by `spectral_modules(model, module_types, include, exclude)`. Under torch.distributed
    (FSDP2 DTensor shards or replicated weights) call it on every process: the work is split across
    processes on gathered full matrices and every process returns the same dictionary.

    `.skipped` of the result names every module with a 2-D weight that got no alpha and why (too
    small, non-finite fit, type outside `module_types`, filtered by `include` / `exclude`); a
    warning lists them when no module at all got an alpha.
    """
    modules = spectral_modules(model, module_types, include, exclude)
    result = alphas_of_modules(modules, min_eigs, fit, dtype, xmin_pos, bins, reference_quirks)
    skipped = {**_unselected(model, module_types, include, exclude), **result.skipped}
    order = [name for name, _ in model.named_modules() if name in skipped]
    result.skipped = {name: skipped[name] for name in order}
    if not result and result.skipped:
        listed = "; ".join(f"{k}: {v}" for k, v in list(result.skipped.items())[:4])
        warnings.warn(
            f"module_alphas: no module got an alpha ({len(result.skipped)} skipped; {listed})",
            stacklevel=2,
        )
    return result


def _unselected(
    model: nn.Module,
    module_types: tuple[type[nn.Module], ...],
    include: Patterns,
    exclude: Patterns,
) -> dict[str, str]:
    """Why each module with a 2-D `weight` is not among `spectral_modules(...)`."""
    inc, exc = _compile(include), _compile(exclude)
    types = ", ".join(t.__name__ for t in module_types)
    reasons = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if not isinstance(module, module_types):
            reasons[name] = (
                f"{type(module).__name__} is not in module_types=({types}); add its class to "
                "module_types to include it"
            )
        elif inc is not None and not any(p.search(name) for p in inc):
            reasons[name] = f"matches no include pattern {include!r}"
        elif exc is not None and any(p.search(name) for p in exc):
            reasons[name] = f"matches an exclude pattern {exclude!r}"
    return reasons
