"""The variance toy model of "When Does Sparsity Mitigate the Curse of Depth in LLMs" (Muhtar et al.,
ICML 2026; spec studies.md A.2): a Pre-LN residual stream whose blocks are masked random maps::

    h_{l+1} = h_l + (M_l ⊙ W_l) z_l,   z_l = h_l / RMS(h_l)  (unit second moment, no affine)
    M_l ~ Bernoulli(p) elementwise,    W_l ~ N(0, σ²/d)       (fresh for every layer and seed)

    E‖h_{l+1}‖²/d = E‖h_l‖²/d + p σ²     ⇒     Var(h_L) = Var(h_0) + L p σ²

(h_0 ~ N(0, Var(h_0) I) has mean 0, so Var = E‖h‖²/d). Lower mask density p = slower variance
growth; the Jacobian distance from identity then falls like ‖∂h_{l+1}/∂h_l − I‖²_F/d ≈ pσ²/Var(h_l).

`variance_toy_model` runs the recursion by Monte Carlo; `toy_jacobian_distance` measures the
Jacobian distance of each step exactly (explicit matrices) next to pσ²/Var(h_l). Given z_l and M_l, the rows of W_l are
independent Gaussians, so u = (M_l ⊙ W_l) z_l has independent coordinates
u_i ~ N(0, σ²/d · Σ_j M_ij z_j²); sampler="conditional" draws u that way (same law as the explicit
product, every mask entry still drawn) and is ~50x cheaper than sampler="dense", which draws W_l and
M_l as d×d matrices. For p = 2^-k (and d a multiple of 64) the mask bits come from k AND-ed random bytes, and Σ_j M_ij z_j² is
read from a 256-entry table of partial sums per group of 8 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "ToyJacobian",
    "ToyVariance",
    "toy_jacobian_distance",
    "toy_step_jacobian",
    "variance_toy_model",
]

_BYTE_BITS = ((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1).float()  # [256, 8]


@dataclass
class ToyVariance:
    """Monte-Carlo and closed-form E‖h_l‖²/d for l = 0..L (float64 tensors of shape [L + 1])."""

    monte_carlo: torch.Tensor  # mean over seeds of ‖h_l‖²/d
    standard_error: torch.Tensor  # standard error of that mean over seeds
    closed_form: torch.Tensor  # Var(h_0) + l p σ²
    density: float
    seeds: int

    @property
    def relative_error(self) -> torch.Tensor:
        """(monte_carlo − closed_form) / closed_form, per layer."""
        return (self.monte_carlo - self.closed_form) / self.closed_form


def _power_of_half(p: float) -> int | None:
    k = -math.log2(p)
    return round(k) if abs(k - round(k)) < 1e-12 and 1 <= round(k) <= 8 else None


def _masked_row_sums(z2: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """s_i = Σ_j M_ij z2_j for a fresh Bernoulli(p) mask M per seed ([S, d] -> [S, d])."""
    seeds, d = z2.shape
    k = _power_of_half(p)
    if k is None or d % 64:
        mask = torch.rand(seeds, d, d, generator=generator) < p
        return torch.bmm(mask.to(z2.dtype), z2.unsqueeze(-1)).squeeze(-1)

    def random_bytes() -> torch.Tensor:  # uniform bytes, drawn 8 at a time as int64 words
        words = torch.randint(
            -(2**63), 2**63 - 1, (seeds, d, d // 64), generator=generator, dtype=torch.int64
        )
        return words.view(torch.uint8)  # [S, d, d/8]

    bits = random_bytes()
    for _ in range(k - 1):  # AND of k fair bits is a Bernoulli(2^-k) bit
        bits &= random_bytes()
    groups = d // 8
    table = z2.float().view(seeds, groups, 8) @ _BYTE_BITS.T  # [S, d/8, 256] partial sums
    base = (torch.arange(seeds)[:, None, None] * groups + torch.arange(groups)) * 256
    return torch.take(table, base + bits.long()).sum(-1, dtype=torch.float64)


def variance_toy_model(
    *,
    hidden_size: int = 512,
    num_layers: int = 32,
    density: float = 1.0,
    sigma: float = 1.0,
    initial_variance: float = 1.0,
    seeds: int = 64,
    seed: int = 0,
    sampler: Literal["conditional", "dense"] = "conditional",
) -> ToyVariance:
    """Monte-Carlo E‖h_l‖²/d of the toy model (module docstring) next to its closed form
    Var(h_0) + l·p·σ², for `seeds` independent networks (one input vector each).

    Args:
        density: mask density p in (0, 1] (weights: 1 − s_W; attention: k_eff/(t+1); GQA: 1/G;
            MoE: k/E in the study's reading).
        sampler: "conditional" (Gaussian given z and M; exact law, cheap) or "dense" (explicit d×d
            W_l and M_l; the check that both agree is a test).
    """
    if not 0 < density <= 1:
        raise ValueError(f"variance_toy_model: density must be in (0, 1], got {density}")
    if sampler not in ("conditional", "dense"):
        raise ValueError(
            f"variance_toy_model: sampler must be 'conditional' or 'dense', got {sampler!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    d = hidden_size
    h = torch.randn(seeds, d, generator=gen, dtype=torch.float64) * math.sqrt(initial_variance)
    second = [h.pow(2).mean(-1)]
    for _ in range(num_layers):
        z = h / h.pow(2).mean(-1, keepdim=True).sqrt()
        if sampler == "dense":
            weight = torch.randn(seeds, d, d, generator=gen, dtype=torch.float64) * (sigma / d**0.5)
            if density < 1:
                weight = weight * (torch.rand(seeds, d, d, generator=gen) < density)
            update = torch.bmm(weight, z.unsqueeze(-1)).squeeze(-1)
        else:
            z2 = z.pow(2)
            if density == 1:
                row_sums = z2.sum(-1, keepdim=True).expand(seeds, d)
            else:
                row_sums = _masked_row_sums(z2, density, gen)
            scale = (sigma**2 / d * row_sums).sqrt()
            update = scale * torch.randn(seeds, d, generator=gen, dtype=torch.float64)
        h = h + update
        second.append(h.pow(2).mean(-1))
    per_seed = torch.stack(second, dim=1)  # [S, L + 1]
    layers = torch.arange(num_layers + 1, dtype=torch.float64)
    return ToyVariance(
        monte_carlo=per_seed.mean(0),
        standard_error=per_seed.std(0) / math.sqrt(seeds)
        if seeds > 1
        else torch.zeros_like(layers),
        closed_form=initial_variance + layers * density * sigma**2,
        density=float(density),
        seeds=seeds,
    )


@dataclass
class ToyJacobian:
    """Per step l = 0..L-1 (float64 [L]): monte_carlo = mean over seeds of ‖∂h_{l+1}/∂h_l − I‖²_F/d,
    closed_form = p σ² / (Var(h_0) + l p σ²), and the standard error over seeds."""

    monte_carlo: torch.Tensor
    standard_error: torch.Tensor
    closed_form: torch.Tensor


def toy_step_jacobian(h: torch.Tensor, masked_weight: torch.Tensor) -> torch.Tensor:
    """∂h_{l+1}/∂h_l = I + A (I − z zᵀ/d) / RMS(h) of one toy step h -> h + A z, z = h/RMS(h)
    (A = M ⊙ W; [d] and [d, d] -> [d, d])."""
    d = h.shape[-1]
    rms = h.pow(2).mean().sqrt()
    z = h / rms
    eye = torch.eye(d, dtype=h.dtype)
    return eye + masked_weight @ (eye - torch.outer(z, z) / d) / rms


def toy_jacobian_distance(
    *,
    hidden_size: int = 128,
    num_layers: int = 8,
    density: float = 1.0,
    sigma: float = 1.0,
    initial_variance: float = 1.0,
    seeds: int = 16,
    seed: int = 0,
) -> ToyJacobian:
    """‖∂h_{l+1}/∂h_l − I‖²_F / d of the toy model (explicit d×d M_l ⊙ W_l, `toy_step_jacobian`)
    against the spec's ≈ pσ²/Var(h_l). Exactly, ‖A P‖²_F/(d·RMS²) with the projection P = I − zzᵀ/d,
    whose expectation is pσ²(1 − 1/d)/RMS(h_l)²: the closed form holds up to O(1/d)."""
    if not 0 < density <= 1:
        raise ValueError(f"toy_jacobian_distance: density must be in (0, 1], got {density}")
    gen = torch.Generator().manual_seed(seed)
    d = hidden_size
    per_seed = torch.zeros(seeds, num_layers, dtype=torch.float64)
    for s in range(seeds):
        h = torch.randn(d, generator=gen, dtype=torch.float64) * math.sqrt(initial_variance)
        for layer in range(num_layers):
            weight = torch.randn(d, d, generator=gen, dtype=torch.float64) * (sigma / d**0.5)
            if density < 1:
                weight = weight * (torch.rand(d, d, generator=gen) < density)
            jac = toy_step_jacobian(h, weight)
            per_seed[s, layer] = (jac - torch.eye(d, dtype=h.dtype)).pow(2).sum() / d
            h = h + weight @ (h / h.pow(2).mean().sqrt())
    layers = torch.arange(num_layers, dtype=torch.float64)
    return ToyJacobian(
        monte_carlo=per_seed.mean(0),
        standard_error=per_seed.std(0) / math.sqrt(seeds) if seeds > 1 else torch.zeros(num_layers),
        closed_form=density * sigma**2 / (initial_variance + layers * density * sigma**2),
    )
