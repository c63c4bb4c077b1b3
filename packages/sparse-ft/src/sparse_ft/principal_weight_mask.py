"""LIFT's Principal Weights: Liu et al., "LIFT the Veil for the Truth: Principal Weights Emerge after
Rank Reduction for Reasoning-Focused Supervised Fine-Tuning", ICML 2025 (arXiv 2506.00772).

For a weight W (m x n), take its best rank-r approximation and keep the k entries that are largest
in magnitude there:

    W' = U_r diag(S_r) V_r^T                       (truncated SVD of W, r = filter_rank)
    M  = top-k_{(i, j)} |W'_ij|                     (k = lift_budget: LoRA's parameter count)

Only the entries in M are fine-tuned. `largest=False` selects the k SMALLEST |W'_ij| instead: what the
official configs have done since July 2025 (mask type `lift_sparse`; the first release selected
the largest).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "lift_budget",
    "low_rank_approximation",
    "principal_weight_indices",
    "principal_weight_mask",
]


def lift_budget(shape: tuple[int, int] | torch.Size, lora_rank: int) -> int:
    """k = min((m + n) * lora_rank, m * n): the parameters a rank-`lora_rank` LoRA adds to an m x n W."""
    if lora_rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
    m, n = int(shape[0]), int(shape[1])
    return min((m + n) * lora_rank, m * n)


def _low_rank_fp64(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """W' = W V_r V_r^T in fp64, V_r the top-`rank` eigenvectors of the smaller fp64 Gram matrix.

    W^T W (or W W^T for a wide W) is formed in fp64, where the products of fp32 entries are exact;
    its eigenvectors span the top-r right (left) singular subspace to ~1e-15, so W' agrees with a
    full fp64 SVD's U_r S_r V_r^T to ~1e-15, far below the gaps between the |W'_ij| that the top-k
    compares (a full fp32 SVD errs by ~1e-7 there and, at llama-60m shapes, flips one entry of
    the mask in a few of the matrices). Costs one fp64 Gram and one eigh of the smaller side.
    """
    w = weight.detach().to(torch.float64)
    wide = w.shape[0] < w.shape[1]
    tall = w.T if wide else w
    basis = torch.linalg.eigh(tall.T @ tall).eigenvectors[:, -rank:]
    approx = (tall @ basis) @ basis.T
    return approx.T if wide else approx


def low_rank_approximation(
    weight: torch.Tensor,
    rank: int,
    *,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """W' = U_r diag(S_r) V_r^T, the best rank-r approximation of `weight`, in fp32 (fp64 stays fp64).

    `method="full"` is exact: the top-r singular subspace from the eigenvectors of the smaller Gram
    matrix in fp64, then W V_r V_r^T in fp64, rounded once (`_low_rank_fp64`): it agrees with a full
    fp64 SVD to ~1e-15 and costs less than a full fp32 SVD. `"lowrank"` runs `torch.svd_lowrank`
    with q = min(2r, m, n) and `niter` power iterations (randomised: seed torch for
    reproducibility; an approximation that selects a different mask). A rank >= min(m, n) returns
    W itself.
    """
    _check(weight, rank)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype)
    if rank >= min(w.shape):
        return w.clone()
    if method == "full":
        return _low_rank_fp64(w, rank).to(dtype)
    if method == "lowrank":
        u, s, v = torch.svd_lowrank(w, q=min(2 * rank, *w.shape), niter=niter)
        return (u[:, :rank] * s[:rank]) @ v[:, :rank].T
    raise ValueError(f"method must be 'full' or 'lowrank', got {method!r}")


def _check(weight: torch.Tensor, rank: int) -> None:
    if weight.dim() != 2:
        raise ValueError(
            f"principal weights are defined for 2-D weights, got {tuple(weight.shape)}"
        )
    if rank < 1:
        raise ValueError(f"filter rank must be >= 1, got {rank}")


def principal_weight_indices(
    weight: torch.Tensor,
    rank: int,
    k: int,
    *,
    largest: bool = True,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """Flat (row-major) indices of the k principal weights of `weight`, sorted ascending (int64).

        indices = sort(top-k_{i} |vec(W')_i|),  W' = rank-`rank` approximation of W

    `largest=False` takes the k smallest |W'_ij| (the official `lift_sparse` configs).
    """
    numel = weight.numel()
    if not 0 < k <= numel:
        raise ValueError(f"k must be in [1, {numel}] for a weight of shape {tuple(weight.shape)}")
    _check(weight, rank)
    if method == "full" and rank < min(weight.shape):
        approx = _low_rank_fp64(weight, rank)  # ranked in fp64: no ties made by rounding
    else:
        approx = low_rank_approximation(weight, rank, method=method, niter=niter)
    chosen = torch.topk(approx.abs().reshape(-1), k, largest=largest, sorted=False).indices
    return torch.sort(chosen).values


def principal_weight_mask(
    weight: torch.Tensor,
    rank: int,
    k: int,
    *,
    largest: bool = True,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """Boolean mask (shape of `weight`) of the k entries of largest |W'_ij|, W' = rank-r approx of W.

    See `principal_weight_indices` for the arguments; `largest=False` reproduces the official
    `lift_sparse` configs (smallest entries).
    """
    indices = principal_weight_indices(weight, rank, k, largest=largest, method=method, niter=niter)
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[indices] = True
    return mask.view(weight.shape)
