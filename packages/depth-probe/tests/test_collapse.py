"""Similarity variants on tensors small enough to do by hand, the batched pass against the one-capture
`similarity_matrix`, and the redundancy profile / contrast / collapse run / outlier drop by hand."""

import math

import pytest
import torch

from depth_probe import (
    LayerSimilarities,
    capture_depth,
    collapse_run,
    early_late_contrast,
    layer_collapse,
    layer_similarities,
    redundancy_profile,
    similarity_matrix,
)
from depth_probe.similarity import similarity_from_sums, similarity_sums
from layerwise_core import tiny_llama


def test_three_variants_by_hand():
    # 2 compared layers, 2 tokens, 2 channels
    layer0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    layer1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    stacked = torch.stack([layer0, layer1])
    sums = similarity_sums(stacked)
    # per token: cos = 1 and 0 -> 1/2
    assert similarity_from_sums(sums, 2, "per_token")[0, 1].item() == pytest.approx(0.5)
    # pooled: means (1/2, 1/2) and (1, 0) -> cos = 1/sqrt(2)
    pooled = similarity_from_sums(sums, 2, "pooled")
    assert pooled[0, 1].item() == pytest.approx(1 / math.sqrt(2))
    # detrended: token 0 has no spread across layers (z = 0, cos 0); token 1 z_1 = -z_0 (cos -1)
    detrended = similarity_from_sums(sums, 2, "per_token_detrended")
    assert detrended[0, 1].item() == pytest.approx(-0.5)
    assert detrended[0, 0].item() == pytest.approx(0.5)  # z = 0 tokens add 0 even on the diagonal


def test_batched_similarities_equal_the_one_capture_matrices_with_and_without_a_channel():
    model = tiny_llama(num_hidden_layers=5)
    ids = torch.randint(0, 128, (5, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    got = layer_similarities(model, ids, mask, zero_channels=[3], batch_size=2)
    capture = capture_depth(model, ids, mask)
    assert got.tokens == int(mask.sum())
    for variant, matrix in got.matrices.items():
        assert matrix.shape == (4, 4)
        torch.testing.assert_close(matrix, similarity_matrix(capture, variant=variant))
        zeroed = similarity_matrix(capture, variant=variant, zero_channels=[3])
        torch.testing.assert_close(got.zeroed[variant], zeroed)
    assert layer_similarities(model, ids, mask).zeroed is None


def test_redundancy_contrast_and_collapse_run_by_hand():
    s = torch.eye(5)
    s[0, 1] = s[1, 0] = 0.95
    s[1, 2] = s[2, 1] = 0.92
    s[0, 2] = s[2, 0] = 0.91
    s[2, 3] = s[3, 2] = 0.5
    s[3, 4] = s[4, 3] = 0.3
    assert redundancy_profile(s).tolist() == pytest.approx([0.95, 0.92, 0.5, 0.3])
    # 4 entries: thirds of max(1, 4 // 3) = 1 entry -> 0.95 - 0.3
    assert early_late_contrast(redundancy_profile(s)) == pytest.approx(0.65)
    assert collapse_run(s, 0.9) == (0, 3)
    s[0, 2] = s[2, 0] = 0.85  # the run needs every pair >= 0.9, not only neighbours
    assert collapse_run(s, 0.9) == (0, 2)
    assert collapse_run(s, 0.99) == (0, 1)
    # a late run beats a shorter early one
    s2 = torch.ones(5, 5)
    s2[0, 1:] = s2[1:, 0] = 0.2
    assert collapse_run(s2) == (1, 4)
    rising = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # AR-like: deep layers redundant
    assert early_late_contrast(rising) == pytest.approx((0.1 + 0.2) / 2 - (0.5 + 0.6) / 2)


def test_layer_collapse_pooled_drop_by_hand():
    per_token = torch.tensor([[1.0, 0.95, 0.2], [0.95, 1.0, 0.3], [0.2, 0.3, 1.0]])
    pooled = torch.tensor([[1.0, 0.99, 0.9], [0.99, 1.0, 0.8], [0.9, 0.8, 1.0]])
    pooled_zeroed = torch.tensor([[1.0, 0.5, 0.6], [0.5, 1.0, 0.7], [0.6, 0.7, 1.0]])
    sims = LayerSimilarities(
        matrices={"per_token": per_token, "pooled": pooled},
        zeroed={"per_token": per_token, "pooled": pooled_zeroed},
        zero_channels=[0],
        tokens=10,
    )
    result = layer_collapse(sims)
    assert result.redundancy.tolist() == pytest.approx([0.95, 0.3])
    assert result.contrast == pytest.approx(0.65)
    assert (result.run_start, result.run_length) == (0, 2)
    assert result.pooled_drop == pytest.approx((0.49 + 0.3 + 0.1) / 3)
    assert result.run_pooled_drop == pytest.approx(0.49)
    sims.zeroed = None
    assert layer_collapse(sims).pooled_drop is None
