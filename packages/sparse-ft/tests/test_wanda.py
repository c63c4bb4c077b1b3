"""Wanda scores and masks vs a direct computation of |W| * ||X_j|| with a per-row selection loop."""

import math

import torch

from sparse_ft import InputNormStatistics, wanda_prune_mask, wanda_scores


def test_scores_and_mask_equal_direct_computation():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=gen)
    batches = [torch.randn(2, 5, 10, generator=gen) * torch.linspace(0.1, 3, 10) for _ in range(3)]
    stats = InputNormStatistics(10)
    for x in batches:
        stats.add_batch(x)
    # ||X_j||^2 as the official running mean: sum over sequences and tokens / number of sequences
    tokens = torch.cat([x.reshape(-1, 10) for x in batches]).double()
    norm_sq = (tokens**2).sum(0) / 6
    want_scores = weight.double().abs() * norm_sq.sqrt()
    scores = wanda_scores(weight, stats.scaler_row)
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-6, atol=1e-6)

    sparsity = 0.45  # int(10 * 0.45) = 4 zeros per row
    mask = wanda_prune_mask(scores, sparsity)
    for r in range(6):
        order = sorted(range(10), key=lambda j: want_scores[r, j].item())
        assert set(mask[r].nonzero().squeeze(1).tolist()) == set(order[: math.floor(10 * sparsity)])


def test_batching_does_not_change_the_statistics():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, 5, generator=gen)
    whole, split = InputNormStatistics(5), InputNormStatistics(5)
    whole.add_batch(x)
    for part in x.split(1):
        split.add_batch(part)
    torch.testing.assert_close(whole.scaler_row, split.scaler_row)


def test_selection_is_per_row_not_per_matrix():
    # Row 0 has tiny scores, row 1 huge ones: a per-matrix rule would zero all of row 0.
    scores = torch.tensor([[0.1, 0.3, 0.2, 0.4], [10.0, 30.0, 20.0, 40.0]])
    mask = wanda_prune_mask(scores, 0.5)
    assert mask.tolist() == [[True, False, True, False], [True, False, True, False]]
