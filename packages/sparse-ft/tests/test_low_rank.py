"""LowRankLinear: forward vs the dense product, merge, truncated-SVD construction (Eckart-Young),
Xavier statistics, meta-device construction; LowRankConfig shorthand."""

import math

import pytest
import torch

from layerwise_core import ConfigError
from sparse_ft import LowRankConfig, LowRankLinear


def _module(n_in=12, n_out=9, rank=4, bias=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    module = LowRankLinear(n_in, n_out, rank, bias=bias, dtype=dtype)
    with torch.no_grad():
        module.bias is not None and module.bias.normal_()
    return module


@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_dense_product(bias):
    module = _module(bias=bias)
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    w = module.weight_out.detach() @ module.weight_in.detach().T  # B A^T, [out, in]
    expected = x @ w.T + (module.bias.detach() if bias else 0)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.merged_weight(), w, rtol=0, atol=0)
    assert module(x).shape == (2, 3, 9)


def test_to_linear_gives_equal_outputs():
    module = _module()
    linear = module.to_linear()
    assert isinstance(linear, torch.nn.Linear) and linear.weight.shape == (9, 12)
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(linear(x), module(x), rtol=1e-12, atol=1e-12)
    assert _module(bias=False).to_linear().bias is None


@pytest.mark.parametrize("rank", [9, 11])  # min(in, out) = 9; 11 pads zero columns
def test_from_linear_exact_at_full_rank(rank):
    torch.manual_seed(1)
    linear = torch.nn.Linear(12, 9, dtype=torch.float64)
    module = LowRankLinear.from_linear(linear, rank)
    assert module.rank == rank
    torch.testing.assert_close(module.merged_weight(), linear.weight, rtol=1e-12, atol=1e-12)
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(module(x), linear(x), rtol=1e-12, atol=1e-12)


def test_from_linear_low_rank_is_truncated_svd():
    torch.manual_seed(2)
    linear = torch.nn.Linear(12, 9, bias=False, dtype=torch.float64)
    rank = 3
    module = LowRankLinear.from_linear(linear, rank)
    w = linear.weight.detach()
    s = torch.linalg.svdvals(w)
    error = torch.linalg.matrix_norm(w - module.merged_weight().detach())
    # Eckart-Young: the best rank-3 error is sqrt(sum of the dropped squared singular values)
    torch.testing.assert_close(error, s[rank:].pow(2).sum().sqrt(), rtol=1e-10, atol=0)
    # singular values split as sqrt on both sides: A^T A = B^T B = diag(S_r)
    a, b = module.weight_in.detach(), module.weight_out.detach()
    torch.testing.assert_close(a.T @ a, torch.diag(s[:rank]), rtol=0, atol=1e-10)
    torch.testing.assert_close(b.T @ b, torch.diag(s[:rank]), rtol=0, atol=1e-10)


def test_xavier_normal_std():
    torch.manual_seed(3)
    module = LowRankLinear(400, 300, 100)
    # xavier_normal_ on an [n, r] factor: std = sqrt(2 / (n + r))
    for factor, n in ((module.weight_in, 400), (module.weight_out, 300)):
        expected = math.sqrt(2.0 / (n + 100))
        assert abs(factor.std().item() / expected - 1) < 0.02  # ~40k samples: 0.35% s.e.
        assert abs(factor.mean().item()) < 4 * expected / math.sqrt(factor.numel())


def test_meta_device_and_bad_rank():
    module = LowRankLinear(8, 4, 2, device="meta")
    assert module.weight_in.is_meta and module.weight_in.shape == (8, 2)
    assert module.weight_out.shape == (4, 2) and module.bias is None
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LowRankLinear(8, 4, 0)


def test_low_rank_config_shorthand():
    assert LowRankConfig.model_validate(128) == LowRankConfig(rank=128)
    assert LowRankConfig().rank is None and not LowRankConfig().enabled
    cfg = LowRankConfig.from_dict({"rank": 64, "mlp": False})
    assert (cfg.rank, cfg.attention, cfg.mlp, cfg.enabled) == (64, True, False, True)
    with pytest.raises(ConfigError):
        LowRankConfig.from_dict({"rank": 0})
    with pytest.raises(ValueError, match="not a boolean"):
        LowRankConfig.model_validate(True)
