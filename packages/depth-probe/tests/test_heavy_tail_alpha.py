"""FARMS blocks against slicing by hand, the study's alpha rule against a plain loop written from the
spec, and the exponent of a weight whose spectrum is a power law of known exponent."""

import itertools
import math

import pytest
import torch

from depth_probe import farms_eigenvalues, heavy_tail_alphas, weight_alpha
from layerwise_core import tiny_llama


def block_spectrum(w):
    return torch.linalg.svdvals(w.double()).pow(2)


def test_farms_pools_the_non_overlapping_blocks():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    blocks = [w[i : i + 32, j : j + 32] for i in (0, 32) for j in (0, 32, 64)]
    everything = torch.cat([block_spectrum(b) for b in blocks]).sort().values
    torch.testing.assert_close(farms_eigenvalues(w, block=32), everything)
    two = farms_eigenvalues(w, block=32, max_blocks=2, seed=3)
    options = [
        torch.cat([block_spectrum(blocks[a]), block_spectrum(blocks[b])]).sort().values
        for a, b in itertools.combinations(range(6), 2)
    ]
    assert any(torch.allclose(two, o) for o in options)
    # a block larger than the matrix: the whole matrix
    torch.testing.assert_close(farms_eigenvalues(w, block=128), block_spectrum(w).sort().values)


def study_alpha(eigs):
    """The spec's rule (B.3.7), one candidate at a time."""
    lam = sorted(eigs.tolist())
    n_all = len(lam)
    logs = [math.log10(v) for v in lam]
    bins = min(100, n_all // 2)
    width = (logs[-1] - logs[0]) / bins
    counts = [0] * bins
    for v in logs:
        counts[min(int((v - logs[0]) / width), bins - 1)] += 1
    peak = 10 ** (logs[0] + counts.index(max(counts)) * width)
    best_d, best_alpha = 2.0, None
    for i, x_min in enumerate(lam[:-1]):
        if not 0.95 * peak <= x_min <= 1.5 * peak:
            continue
        n = n_all - i
        alpha = 1 + n / sum(math.log(v / x_min) for v in lam[i:])
        d = max(abs(1 - (lam[i + k] / x_min) ** (1 - alpha) - k / n) for k in range(n))
        if d < best_d:
            best_d, best_alpha = d, alpha
    return max(best_alpha, 1.0)


def test_weight_alpha_follows_the_study_rule():
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(1)) ** 3  # heavy-ish tails
    eigs = farms_eigenvalues(w, block=16)
    assert weight_alpha(w, block=16) == pytest.approx(study_alpha(eigs), rel=1e-9)


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_power_law_spectrum_of_known_exponent(alpha):
    # sigma^2 = the quantiles of p(lambda) ~ lambda^(-alpha), lambda >= 1, planted as singular values
    n = 400
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    lam = (1 - q).pow(-1 / (alpha - 1))
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    w = u @ torch.diag(lam.sqrt()) @ v.T
    got = weight_alpha(w, block=512)  # block > side: the whole matrix
    assert abs(got - alpha) < (alpha - 1) / math.sqrt(n), got  # one asymptotic MLE sd


def test_every_linear_of_every_block():
    model = tiny_llama(num_hidden_layers=2)
    result = heavy_tail_alphas(model, block=16)
    assert len(result.per_matrix) == 2 * 7 and result.per_layer.shape == (2,)
    q = model.model.layers[1].self_attn.q_proj.weight
    assert result.per_matrix["layers.1.self_attn.q_proj"] == weight_alpha(q, block=16)
    only = heavy_tail_alphas(model, block=16, names=["mlp.down_proj"])
    assert list(only.per_matrix) == ["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]
    assert (torch.tensor(list(result.per_matrix.values())) >= 1).all()
