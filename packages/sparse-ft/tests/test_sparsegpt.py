"""SparseGPT: the OBS update vs a hand-derived 2-column case, reconstruction error vs magnitude and
Wanda on a constructed layer, exact per-block sparsity, dead inputs."""

import pytest
import torch

from sparse_ft import (
    HessianStatistics,
    magnitude_prune_mask,
    sparsegpt_prune,
    wanda_prune_mask,
    wanda_scores,
)


def test_obs_update_of_two_columns_by_hand():
    # H = [[a, b], [b, c]]. Pruning w0 and re-optimising w1 minimises (w - w')^T H (w - w'):
    # w1' = w1 + (b / c) w0. The mask picks the smaller w^2 / [chol(H^-1)]_jj^2, here column 0.
    a, b, c = 2.0, 0.6, 1.0
    hessian = torch.tensor([[a, b], [b, c]], dtype=torch.float64)
    weight = torch.tensor([[0.3, 1.0]], dtype=torch.float64)
    new, pruned = sparsegpt_prune(weight, hessian, 0.5, percdamp=0.0)
    assert pruned.tolist() == [[True, False]]
    torch.testing.assert_close(new, torch.tensor([[0.0, 1.0 + (b / c) * 0.3]], dtype=torch.float64))


def _constructed_layer(seed=0):
    gen = torch.Generator().manual_seed(seed)
    # correlated inputs with a few large-norm features: where OBS updates and |X| scaling matter
    mixing = torch.randn(24, 24, generator=gen) * 0.4 + torch.eye(24)
    x = torch.randn(16, 32, 24, generator=gen) @ mixing
    x[..., :3] *= 6.0
    weight = torch.randn(20, 24, generator=gen)
    return weight, x


def test_reconstruction_error_below_magnitude_and_wanda():
    weight, x = _constructed_layer()
    stats = HessianStatistics(24)
    stats.add_batch(x)
    tokens = x.reshape(-1, 24)
    dense_out = tokens @ weight.T

    def error(w):
        return ((tokens @ w.T - dense_out) ** 2).sum().item()

    sgpt, pruned = sparsegpt_prune(weight, stats.hessian, 0.5, blocksize=8)
    magnitude = weight.masked_fill(magnitude_prune_mask(weight, 0.5), 0)
    norms = (tokens**2).sum(0) / x.shape[0]
    wanda = weight.masked_fill(wanda_prune_mask(wanda_scores(weight, norms), 0.5), 0)
    assert (sgpt[pruned] == 0).all() and pruned.float().mean().item() == 0.5
    e_sgpt, e_mag, e_wanda = error(sgpt), error(magnitude), error(wanda)
    assert e_sgpt < e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)


@pytest.mark.parametrize("quirks", [False, True])
def test_each_block_gets_its_count(quirks):
    weight, x = _constructed_layer(seed=1)
    stats = HessianStatistics(24)
    stats.add_batch(x)
    _, pruned = sparsegpt_prune(weight, stats.hessian, 0.3, blocksize=8, reference_quirks=quirks)
    # int(20 * 8 * 0.3) = 48 per 8-column block; the official threshold rule takes one more
    per_block = pruned.view(20, 3, 8).sum((0, 2))
    assert per_block.tolist() == [48 + quirks] * 3


def test_dead_inputs_are_zeroed_and_sparsity_zero_keeps_weight():
    weight, x = _constructed_layer(seed=2)
    x[..., 5] = 0  # an input feature that never fires
    stats = HessianStatistics(24)
    stats.add_batch(x)
    new, _ = sparsegpt_prune(weight, stats.hessian, 0.0)
    assert (new[:, 5] == 0).all()
    keep = torch.ones(24, dtype=torch.bool)
    keep[5] = False
    torch.testing.assert_close(new[:, keep], weight[:, keep], rtol=1e-4, atol=1e-4)
