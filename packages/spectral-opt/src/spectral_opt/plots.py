"""Plots (matplotlib, the `[plot]` extra): an ESD with its fitted power-law tail, alpha per module,
and alpha per module over training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from spectral_opt.esd import esd
from spectral_opt.hill_alpha import fit_power_law

__all__ = ["plot_alpha_history", "plot_esd", "plot_module_alphas"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'spectral-opt[plot]'") from error
    return plt


def plot_esd(
    weight_or_eigenvalues: torch.Tensor,
    fit: str = "median",
    bins: int = 100,
    ax: Any = None,
    title: str | None = None,
):
    """Histogram of the ESD on log-log axes with the fitted tail p(lambda) ~ lambda^(-alpha).

    Accepts a 2-D weight (its ESD is computed) or a 1-D tensor of eigenvalues. Returns the axes.
    The fitted density is scaled to the share of eigenvalues in the tail, (n / N), so that it sits
    on the histogram: p(lambda) = (n/N) (alpha - 1) / x_min (lambda / x_min)^(-alpha).
    """
    plt = _pyplot()
    x = weight_or_eigenvalues
    eigs = esd(x) if x.dim() == 2 else x.detach()
    eigs = eigs.double().sort().values.clamp_min(torch.finfo(torch.float64).tiny)
    result = fit_power_law(eigs, fit=fit, bins=bins)
    alpha, xmin = float(result.alpha), float(result.xmin)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    edges = torch.logspace(float(eigs[0].log10()), float(eigs[-1].log10()), bins + 1)
    ax.hist(eigs.numpy(), bins=edges.numpy(), density=True, alpha=0.6, label="ESD")
    share = float((eigs >= xmin).double().mean())
    tail = torch.logspace(float(torch.tensor(xmin).log10()), float(eigs[-1].log10()), 50)
    density = share * (alpha - 1) / xmin * (tail / xmin) ** (-alpha)
    ax.plot(tail.numpy(), density.numpy(), "r-", label=f"power law, alpha = {alpha:.2f}")
    ax.axvline(xmin, color="k", ls=":", lw=1, label="x_min")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue lambda of W^T W")
    ax.set_ylabel("density")
    ax.set_title(title or f"ESD ({fit} fit)")
    ax.legend(fontsize=8)
    return ax


def plot_module_alphas(alphas: Mapping[str, float], ax: Any = None, title: str | None = None):
    """alpha of each module, in the given order (one bar per module). Returns the axes."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5, 0.12 * len(alphas)), 3.5))
    names = list(alphas)
    ax.bar(range(len(names)), [alphas[n] for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylabel("alpha")
    ax.set_title(title or "ESD alpha per module")
    return ax


def plot_alpha_history(
    history: Sequence[tuple[int, Mapping[str, float]]],
    modules: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = None,
):
    """alpha of each module over training, from a controller's `history` [(step, {name: alpha})].

    `modules` picks the lines (all by default). Returns the axes.
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    names = list(modules) if modules is not None else list(history[0][1]) if history else []
    for name in names:
        points = [(t, a[name]) for t, a in history if name in a]
        ax.plot([t for t, _ in points], [a for _, a in points], lw=1, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("alpha")
    ax.set_title(title or "ESD alpha per module over training")
    if len(names) <= 12:
        ax.legend(fontsize=6)
    return ax
