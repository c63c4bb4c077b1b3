"""LIFT's Principal Weights vs an explicit SVD, a rank-r sum of outer products and a sorted top-k."""

import pytest
import torch

from sparse_ft import (
    lift_budget,
    low_rank_approximation,
    principal_weight_indices,
    principal_weight_mask,
)


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
