"""LIFT's Principal Weights vs an explicit SVD, a rank-r sum of outer products and a sorted top-k."""

import pytest
import torch

from sparse_ft import (
    lift_budget,
    low_rank_approximation,
    principal_weight_indices,
    principal_weight_mask,
)
from sparse_ft.principal_weight_mask import _certified_indices, _low_rank_fp64, _refined_subspace


def _explicit_topk(weight: torch.Tensor, rank: int, k: int, largest: bool) -> set[int]:
    """W' = sum_{i < r} s_i u_i v_i^T from numpy-free SVD factors, entries ranked by sorting."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=True)
    approx = torch.zeros_like(weight, dtype=torch.float64)
    for i in range(rank):
        approx += s[i] * torch.outer(u[:, i], vh[i])
    ranked = sorted(range(approx.numel()), key=lambda j: abs(approx.reshape(-1)[j].item()))
    chosen = ranked[-k:] if largest else ranked[:k]
    return set(chosen)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize(("m", "n", "rank", "k"), [(7, 5, 2, 9), (12, 20, 3, 40)])
def test_mask_equals_explicit_svd_and_topk(m, n, rank, k, largest):
    weight = torch.randn(m, n, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
    got = principal_weight_indices(weight, rank, k, largest=largest)
    assert got.tolist() == sorted(got.tolist()) and got.numel() == k
    assert set(got.tolist()) == _explicit_topk(weight, rank, k, largest)
    mask = principal_weight_mask(weight, rank, k, largest=largest)
    assert mask.shape == weight.shape and int(mask.sum()) == k
    assert set(mask.reshape(-1).nonzero().squeeze(1).tolist()) == set(got.tolist())


def test_budget_is_lora_parameter_count_capped_by_matrix():
    assert lift_budget((4096, 4096), 128) == (4096 + 4096) * 128
    assert lift_budget((8, 6), 4) == 48  # (8 + 6) * 4 = 56 > 48 entries: capped
    with pytest.raises(ValueError, match="lora_rank"):
        lift_budget((8, 6), 0)


def test_full_rank_filter_returns_the_weight_and_lowrank_is_exact_on_low_rank_input():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 4, generator=gen)
    torch.testing.assert_close(low_rank_approximation(weight, 4), weight)
    # an exactly rank-2 matrix: both SVD routes reconstruct it
    low = torch.randn(30, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        2, 20, generator=gen, dtype=torch.float64
    )
    torch.manual_seed(0)
    for method in ("full", "lowrank"):
        torch.testing.assert_close(low_rank_approximation(low, 2, method=method), low)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="k must be in"):
        principal_weight_indices(torch.ones(3, 3), 1, 10)
    with pytest.raises(ValueError, match="2-D"):
        low_rank_approximation(torch.ones(3), 1)


def _previous_approximation(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """W' before issue 21 (the official code's rule, kept as the reference): a full SVD in the
    weight's own precision (fp32 here), U_r S_r V_r^T."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _top_k(approx: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    return torch.sort(torch.topk(approx.abs().reshape(-1), k, largest=largest).indices).values


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize(
    ("m", "n", "rank", "lora_rank", "seed"),
    [(512, 512, 64, 8, 0), (512, 512, 64, 8, 1), (96, 64, 8, 2, 2), (40, 120, 6, 3, 3)],
)
def test_fp32_mask_is_exact_and_moves_only_near_ties_of_the_previous_one(
    m, n, rank, lora_rank, seed, largest
):
    # Issue 21's set-up work replaced the full fp32 SVD by the eigenvectors of the smaller fp64
    # Gram matrix (llama-60m's q_proj shape first). The mask is always that of a full fp64 SVD; the
    # previous fp32 mask equals it except where the fp32 SVD's own error reorders two |W'_ij| at
    # the k-th value (a near-tie), which must be the only places where the two masks differ.
    weight = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * 0.02
    k = lift_budget((m, n), lora_rank)
    got = principal_weight_indices(weight, rank, k, largest=largest)
    exact = _previous_approximation(weight.double(), rank)
    assert torch.equal(got, _top_k(exact, k, largest))
    previous = _previous_approximation(weight, rank)
    moved = set(got.tolist()) ^ set(_top_k(previous, k, largest).tolist())
    if moved:
        fp32_error = float((previous.double() - exact).abs().max())
        ranked = exact.abs().reshape(-1).sort(descending=largest).values
        kth = float(ranked[k - 1])
        assert len(moved) <= 4
        assert all(abs(abs(float(exact.reshape(-1)[i])) - kth) <= 2 * fp32_error for i in moved)


def test_fp32_low_rank_approximation_is_the_rounded_fp64_svd():
    gen = torch.Generator().manual_seed(3)
    for shape in [(70, 50), (50, 90)]:
        weight = torch.randn(*shape, generator=gen)
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        want = (u[:, :7] * s[:7]) @ vh[:7]
        got = low_rank_approximation(weight, 7)
        assert got.dtype == torch.float32
        # one rounding to fp32 (half an ulp), nothing of the fp32 SVD's ~1e-6 relative error
        err = (got.double() - want).abs() / want.abs().clamp_min(1e-30)
        assert float(err.max()) <= 2**-24 * 1.01


def _full_decomposition_indices(weight: torch.Tensor, rank: int, k: int, largest: bool):
    """The mask before the certified path: fp64 Gram eigenvectors (`_low_rank_fp64`), top-k."""
    return _top_k(_low_rank_fp64(weight, rank), k, largest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heavy_tailed", [False, True])
@pytest.mark.parametrize(("m", "n"), [(512, 512), (512, 1376)])
def test_certified_mask_equals_the_full_decomposition_mask(m, n, heavy_tailed, dtype):
    # llama-60m shapes, filter rank 64, LoRA rank 8 (k = 8192 / 15104): the default path returns
    # exactly the previous fp64-eigh mask; a certified mask equals it; on the fp32 Gaussian init
    # (the benchmark's case) the certificate must pass (else the fast path would never run).
    gen = torch.Generator().manual_seed(m + n + heavy_tailed)
    torch.manual_seed(m + n)
    if heavy_tailed:
        weight = torch.distributions.StudentT(2.5).sample((m, n)) * 0.02
    else:
        weight = torch.randn(m, n, generator=gen) * 0.02
    weight = weight.to(dtype)
    k = lift_budget((m, n), 8)
    want = _full_decomposition_indices(weight, 64, k, True)
    assert torch.equal(principal_weight_indices(weight, 64, k), want)
    certified = _certified_indices(weight, 64, k, True)
    assert certified is None or torch.equal(certified, want)
    if dtype == torch.float32 and not heavy_tailed:
        assert certified is not None


def test_refined_subspace_bound_holds_and_fallback_when_no_gap():
    gen = torch.Generator().manual_seed(7)
    tall = torch.randn(300, 200, generator=gen, dtype=torch.float64)
    basis, bound = _refined_subspace(tall, 20)
    vectors = torch.linalg.eigh(tall.T @ tall).eigenvectors[:, -20:]
    angle = torch.linalg.matrix_norm(vectors @ vectors.T - basis @ basis.T, ord=2)
    assert float(angle) <= bound < 1e-6  # the bound is an upper bound, and tight enough to use
    # sigma_20 = sigma_21: the top-20 subspace is not unique, no certificate; the caller falls
    # back to the fp64 decomposition and returns its mask
    u, _ = torch.linalg.qr(torch.randn(300, 200, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    s = torch.linspace(3.0, 1.0, 200, dtype=torch.float64)
    s[20] = s[19]
    weight = (u * s) @ v.T
    assert _refined_subspace(weight, 20)[1] == float("inf")
    assert _certified_indices(weight, 20, 800, True) is None
    torch.testing.assert_close(
        principal_weight_indices(weight, 20, 800),
        _full_decomposition_indices(weight, 20, 800, True),
        rtol=0,
        atol=0,
    )
