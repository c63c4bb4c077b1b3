"""ESD = squared singular values: Gram + eigvalsh against `torch.linalg.svdvals`."""

import pytest
import torch

from spectral_opt import batched_esd, esd


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (50, 50)])
def test_esd_equals_squared_singular_values_float64(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    expected = torch.linalg.svdvals(w).pow(2).flip(0)  # ascending
    got = esd(w, dtype=torch.float64)
    assert got.shape == (min(shape),)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_esd_float32_matches_float64_svd():
    torch.manual_seed(1)
    w = torch.randn(120, 80)
    expected = torch.linalg.svdvals(w.double()).pow(2).flip(0)
    got = esd(w).double()
    assert got.dtype == torch.float64 and esd(w).dtype == torch.float32
    # roundoff of the Gram matrix is relative to the largest eigenvalue
    assert ((got - expected).abs().max() / expected.max()).item() < 1e-5


def test_batched_equals_per_matrix():
    torch.manual_seed(2)
    stack = torch.randn(4, 30, 70)
    got = batched_esd(stack)
    for b in range(4):
        torch.testing.assert_close(got[b], esd(stack[b]), rtol=1e-5, atol=1e-5)


def test_rank_deficient_spectrum_is_clamped_positive():
    u, v = torch.randn(60, 1, dtype=torch.float64), torch.randn(60, 1, dtype=torch.float64)
    eigs = esd(u @ v.T, dtype=torch.float64)
    assert (eigs > 0).all()  # zeros (and roundoff negatives) clamped: logs stay finite
    torch.testing.assert_close(eigs[-1], (u.norm() * v.norm()) ** 2)
    assert torch.isfinite(eigs.log()).all()


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="reshape"):
        esd(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        esd(torch.randn(3, 3), dtype=torch.float16)
    with pytest.raises(ValueError, match="esd\\(weight\\)"):
        batched_esd(torch.randn(3, 3))
