"""The variance toy model of the sparsity-vs-depth study (spec studies.md A.2): Monte-Carlo
Var(h_L) = Var(h_0) + L p σ² within 2% at d=512, L=32, 64 seeds, p in {1, 0.5, 0.125}."""

import pytest
import torch

import depth_probe as dp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("density", [1.0, 0.5, 0.125])
def test_monte_carlo_variance_matches_the_closed_form(density):
    toy = dp.variance_toy_model(hidden_size=512, num_layers=32, density=density, seeds=64)
    assert float(toy.closed_form[-1]) == pytest.approx(1.0 + 32 * density)
    assert abs(float(toy.relative_error[-1])) < 0.02, toy.relative_error[-1]
    # the 2% tolerance is at least two standard errors of the Monte-Carlo mean
    assert float(toy.standard_error[-1] / toy.closed_form[-1]) < 0.01
    assert (toy.relative_error.abs() < 0.02).all()


def test_dense_sampler_draws_the_same_law():
    """Explicit d x d masked Gaussian weights (small d) agree with the closed form, like the
    conditional sampler does."""
    for density in (1.0, 0.25):
        toy = dp.variance_toy_model(
            hidden_size=64, num_layers=16, density=density, seeds=64, sampler="dense", seed=5
        )
        gap = (toy.monte_carlo - toy.closed_form).abs()
        assert (gap <= 4 * toy.standard_error + 1e-12).all(), (gap, toy.standard_error)
        cond = dp.variance_toy_model(
            hidden_size=64, num_layers=16, density=density, seeds=64, seed=5
        )
        both = (toy.monte_carlo[-1] - cond.monte_carlo[-1]).abs()
        assert both < 4 * (toy.standard_error[-1] ** 2 + cond.standard_error[-1] ** 2) ** 0.5


def test_lower_density_slows_the_growth_and_errors_name_the_fix():
    dense = dp.variance_toy_model(hidden_size=64, num_layers=8, density=1.0, seeds=8)
    sparse = dp.variance_toy_model(hidden_size=64, num_layers=8, density=0.125, seeds=8)
    assert sparse.monte_carlo[-1] < dense.monte_carlo[-1]
    with pytest.raises(ValueError, match="density"):
        dp.variance_toy_model(density=0.0)
    # a density that is not a power of 1/2 uses explicit Bernoulli masks
    other = dp.variance_toy_model(hidden_size=64, num_layers=8, density=0.3, seeds=16)
    assert abs(float(other.relative_error[-1])) < 4 * float(
        other.standard_error[-1] / other.closed_form[-1]
    )
    assert isinstance(other.monte_carlo, torch.Tensor)


def test_toy_step_jacobian_equals_autograd_and_falls_like_p_sigma2_over_variance():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, generator=g, dtype=torch.float64) * 2
    weight = torch.randn(16, 16, generator=g, dtype=torch.float64) * (
        torch.rand(16, 16, generator=g) < 0.5
    )

    def step(x):
        return x + weight @ (x / x.pow(2).mean().sqrt())

    auto = torch.autograd.functional.jacobian(step, h)
    torch.testing.assert_close(dp.toy_step_jacobian(h, weight), auto, atol=1e-12, rtol=1e-10)
    for density in (1.0, 0.25):
        toy = dp.toy_jacobian_distance(hidden_size=128, num_layers=8, density=density, seeds=16)
        gap = (toy.monte_carlo - toy.closed_form).abs()
        # Monte-Carlo error (3 standard errors) plus the O(1/d) bias of the approximation
        assert (gap <= 3 * toy.standard_error + 2 * toy.closed_form / 128).all(), gap
        ratio = float((toy.monte_carlo / toy.closed_form).mean())
        assert ratio == pytest.approx(1.0, abs=0.05)  # pooled over the 8 steps
        assert toy.monte_carlo[-1] < toy.monte_carlo[0] / 2  # D_l falls as the variance grows
