"""Power-law exponent alpha of an ESD tail: the Hill (maximum-likelihood) estimator of TempBalance.

Shared by spectral-opt (AlphaDecay, LayerwiseLR; it re-exports these names unchanged from
`spectral_opt.hill_alpha`) and depth-probe (heavy-tail alpha per weight matrix of the DLM-vs-AR
layer-collapse study, whose KS-minimising x_min search around the log-histogram peak is the
`"fix_finger"` fit below).

For ascending eigenvalues lambda_1 <= ... <= lambda_N and a tail start x_min = lambda_i (0-based
index i), the continuous power-law MLE (Clauset, Shalizi & Newman 2009) over the n = N - i tail
eigenvalues is

    alpha = 1 + n / ( sum_{j >= i} ln lambda_j  -  n ln lambda_i )

and its Kolmogorov-Smirnov distance to the empirical tail is

    D = max_{k = 0..n-1} | 1 - (lambda_{i+k} / lambda_i)^(1 - alpha) - k / n |.

The three ways TempBalance (`esd_utils.py`; reused by AlphaDecay and LLR) chooses x_min:

- `"median"` (default of AlphaDecay and LLR): i = int(N / xmin_pos), the middle of the spectrum
  for xmin_pos = 2;
- `"goodness_of_fit"`: every i in 0..N-2; keep the alpha with the smallest D (Clauset style);
  candidates with alpha <= 1 count as D = 1;
- `"fix_finger"`: histogram of log10(lambda) in `bins` bins; with p = 10^(left edge of the fullest
  bin), only candidates with 0.95 p <= lambda_i <= 1.5 p are scanned as in `goodness_of_fit`.

Differences from the reference (`reference_quirks=False`): sums are in float64; `fix_finger` uses the
lower bound 0.95 p (the reference compares lambda_i with log10(0.95 p), a log against a linear
value, so for p < 1/0.95 it scans from the smallest eigenvalue) and falls back to the full
`goodness_of_fit` scan when no candidate has alpha > 1 (the reference returns alpha = 0 then).
`reference_quirks=True` reproduces both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["FITS", "PowerLawFit", "fit_power_law", "hill_alpha", "normalise_fit"]

FITS = ("median", "goodness_of_fit", "fix_finger")
_ALIASES = {"goodness-of-fit": "goodness_of_fit", "fix-finger": "fix_finger"}
_CHUNK_ELEMENTS = 1 << 22  # candidates x eigenvalues per block of the KS scan (32 MiB in float64)


class PowerLawFit(NamedTuple):
    alpha: torch.Tensor  # power-law exponent of the tail, float64
    xmin: torch.Tensor  # eigenvalue where the fitted tail starts
    ks_distance: torch.Tensor  # Kolmogorov-Smirnov distance D of the fit


def normalise_fit(fit: str) -> str:
    """The canonical name of a power-law fit (`"fix-finger"` -> `"fix_finger"`); ValueError if unknown."""
    fit = _ALIASES.get(fit, fit)
    if fit not in FITS:
        raise ValueError(f"unknown power-law fit {fit!r}; choose one of {FITS}")
    return fit


def _candidate_scan(
    lam: torch.Tensor, logs: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_i and D_i (1 where alpha_i <= 1) for each candidate index i of one sorted spectrum."""
    N = lam.shape[0]
    suffix = logs.flip(0).cumsum(0).flip(0)  # suffix[i] = sum_{j >= i} ln lambda_j
    n = (N - candidates).to(lam.dtype)
    alphas = 1.0 + n / (suffix[candidates] - n * logs[candidates])
    ks = torch.ones_like(alphas)
    j = torch.arange(N, device=lam.device)
    step = max(1, _CHUNK_ELEMENTS // N)
    for start in range(0, candidates.numel(), step):
        idx = candidates[start : start + step]
        a = alphas[start : start + step, None]
        k = (j[None, :] - idx[:, None]).to(lam.dtype)  # position in the tail, < 0 before it
        ratio = lam[None, :] / lam[idx][:, None]
        dist = (1.0 - ratio.pow(1.0 - a) - k / n[start : start + step, None]).abs()
        dist = torch.where(k >= 0, dist, torch.zeros_like(dist)).amax(dim=1)
        valid = alphas[start : start + step] > 1.0
        ks[start : start + step] = torch.where(valid, dist, ks[start : start + step])
    return alphas, ks


def _fit_one(
    lam: torch.Tensor, fit: str, bins: int, reference_quirks: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = lam.shape[0]
    logs = lam.log()
    everything = torch.arange(N - 1, device=lam.device)
    if fit == "goodness_of_fit":
        alphas, ks = _candidate_scan(lam, logs, everything)
        best = int(torch.argmin(ks))
        return alphas[best], lam[best], ks[best]
    # fix_finger: candidates around the peak of the log10 histogram
    log10 = lam.log10()
    lo, hi = float(log10.min()), float(log10.max())
    counts = torch.histc(log10, bins=bins, min=lo, max=hi)
    peak = 10.0 ** (lo + int(torch.argmax(counts)) * (hi - lo) / bins)
    lower = math.log10(0.95 * peak) if reference_quirks else 0.95 * peak
    inside = (lam[:-1] >= lower) & (lam[:-1] <= 1.5 * peak)
    alphas_all = torch.zeros(N - 1, dtype=lam.dtype, device=lam.device)
    ks_all = torch.ones(N - 1, dtype=lam.dtype, device=lam.device)
    if bool(inside.any()):
        candidates = everything[inside]
        alphas_all[candidates], ks_all[candidates] = _candidate_scan(lam, logs, candidates)
    if not reference_quirks and not bool((alphas_all > 1.0).any()):
        alphas_all, ks_all = _candidate_scan(lam, logs, everything)
    best = int(torch.argmin(ks_all))
    return alphas_all[best], lam[best], ks_all[best]


def fit_power_law(
    eigenvalues: torch.Tensor,
    fit: str = "median",
    xmin_pos: float = 2.0,
    bins: int = 100,
    reference_quirks: bool = False,
) -> PowerLawFit:
    """Fit a power law p(lambda) ~ lambda^(-alpha) to the tail of an ESD (see the module docstring).

    `eigenvalues`: shape (N,) or a batch (B, N) of positive eigenvalues in any order (`esd` output);
    values <= 0 are clamped to the smallest positive float. Returns float64 tensors of shape () or
    (B,). `xmin_pos` is used by the `median` fit only, `bins` by `fix_finger` only.
    """
    fit = normalise_fit(fit)
    if eigenvalues.dim() not in (1, 2):
        raise ValueError(
            f"eigenvalues must have shape (N,) or (batch, N), got {tuple(eigenvalues.shape)}"
        )
    single = eigenvalues.dim() == 1
    lam = eigenvalues.detach().to(torch.float64)
    lam = lam.unsqueeze(0) if single else lam
    N = lam.shape[1]
    if N < 2:
        raise ValueError(f"a power-law fit needs at least 2 eigenvalues, got {N}")
    if xmin_pos < 1:
        raise ValueError(f"xmin_pos must be >= 1 (x_min index = int(N / xmin_pos)), got {xmin_pos}")
    lam = lam.sort(dim=1).values.clamp_min(torch.finfo(torch.float64).tiny)
    if fit == "median":
        i = min(int(N / xmin_pos), N - 1)
        n = N - i
        logs = lam.log()
        alpha = 1.0 + n / (logs[:, i:].sum(dim=1) - n * logs[:, i])
        xmin = lam[:, i]
        k = torch.arange(n, dtype=torch.float64, device=lam.device)
        ratio = lam[:, i:] / xmin[:, None]
        ks = (1.0 - ratio.pow(1.0 - alpha[:, None]) - k / n).abs().amax(dim=1)
    else:
        fits = [_fit_one(row, fit, bins, reference_quirks) for row in lam]
        alpha, xmin, ks = (torch.stack(column) for column in zip(*fits))
    if single:
        alpha, xmin, ks = alpha[0], xmin[0], ks[0]
    return PowerLawFit(alpha, xmin, ks)


def hill_alpha(
    eigenvalues: torch.Tensor,
    fit: str = "median",
    xmin_pos: float = 2.0,
    bins: int = 100,
    reference_quirks: bool = False,
) -> torch.Tensor:
    """The power-law exponent alpha of the ESD tail (TempBalance's `alpha`):

        alpha = 1 + n / ( sum_{j >= i} ln lambda_j - n ln lambda_i ),   n = N - i,

    with x_min = lambda_i chosen by `fit` ("median": i = int(N / xmin_pos); "goodness_of_fit";
    "fix_finger"). Shape () for one spectrum, (B,) for a batch; float64.
    """
    return fit_power_law(eigenvalues, fit, xmin_pos, bins, reference_quirks).alpha
