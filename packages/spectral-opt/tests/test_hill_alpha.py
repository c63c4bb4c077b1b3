"""Hill estimator: hand-derived values, Pareto samples of known exponent, plain-loop references
of the Clauset scan and of TempBalance's fix-finger (with and without its quirk)."""

import math

import pytest
import torch

from spectral_opt import fit_power_law, hill_alpha


def pareto(alpha: float, n: int, seed: int) -> torch.Tensor:
    """n samples of p(x) = (alpha - 1) x^(-alpha), x >= 1 (inverse CDF: x = u^(-1/(alpha-1)))."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return u.pow(-1.0 / (alpha - 1.0))


def mle_tolerance(alpha: float, n_tail: int) -> float:
    # asymptotic standard deviation of the power-law MLE is (alpha - 1) / sqrt(n): allow 5 of them
    return 5.0 * (alpha - 1.0) / math.sqrt(n_tail)


def test_median_fit_hand_derived():
    eigs = torch.tensor([8.0, 1.0, 4.0, 2.0])  # any order
    fit = fit_power_law(eigs)
    # i = int(4 / 2) = 2, x_min = 4, n = 2: sum ln(4, 8) - 2 ln 4 = ln 2
    alpha = 1 + 2 / math.log(2)
    assert fit.alpha.item() == pytest.approx(alpha, rel=1e-12)
    assert fit.xmin.item() == 4.0
    # KS over the tail (4, 8): k=0 gives 0; k=1 gives |1 - 2^(1 - alpha) - 1/2|
    assert fit.ks_distance.item() == pytest.approx(abs(0.5 - 2 ** (1 - alpha)), rel=1e-12)
    # xmin_pos = 4: i = 1, x_min = 2, n = 3: sum ln(2, 4, 8) - 3 ln 2 = 3 ln 2
    assert hill_alpha(eigs, xmin_pos=4).item() == pytest.approx(1 + 1 / math.log(2), rel=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_median_fit_recovers_pareto_exponent(alpha):
    eigs = pareto(alpha, 20_000, seed=int(alpha * 10))
    got = hill_alpha(eigs).item()
    assert abs(got - alpha) < mle_tolerance(alpha, 10_000), got


@pytest.mark.parametrize("fit", ["goodness_of_fit", "fix_finger"])
@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_scanning_fits_recover_pareto_exponent(fit, alpha):
    eigs = pareto(alpha, 3000, seed=7)
    result = fit_power_law(eigs, fit=fit)
    n_tail = int((eigs >= result.xmin).sum())
    assert n_tail >= 300  # the chosen tail is not a handful of points
    assert abs(result.alpha.item() - alpha) < mle_tolerance(alpha, n_tail), (result, n_tail)


def _scan_reference(lam: list[float], lower: float, upper: float) -> float:
    """Plain loops over the candidate x_min of one ascending spectrum (TempBalance's scan)."""
    N = len(lam)
    alphas, ks = [0.0] * (N - 1), [1.0] * (N - 1)
    for i in range(N - 1):
        if lam[i] < lower:
            continue
        if lam[i] > upper:
            break
        n = N - i
        a = 1 + n / (sum(math.log(x) for x in lam[i:]) - n * math.log(lam[i]))
        alphas[i] = a
        if a > 1:
            ks[i] = max(abs(1 - (lam[i + k] / lam[i]) ** (1 - a) - k / n) for k in range(n))
    best = min(range(N - 1), key=lambda i: (ks[i], i))
    return alphas[best]


def _fix_finger_window(lam: list[float], bins: int) -> tuple[float, float]:
    logs = [math.log10(x) for x in lam]
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / bins
    counts = [0] * bins
    for x in logs:
        counts[min(int((x - lo) / width), bins - 1)] += 1
    peak = 10 ** (lo + counts.index(max(counts)) * width)
    return peak, 1.5 * peak


def test_goodness_of_fit_equals_plain_loop():
    torch.manual_seed(3)
    eigs = (torch.randn(150, 90, dtype=torch.float64) * 0.1).pow(2).sum(0)
    lam = sorted(eigs.tolist())
    expected = _scan_reference(lam, -math.inf, math.inf)
    assert hill_alpha(eigs, fit="goodness-of-fit").item() == pytest.approx(expected, rel=1e-9)


def test_fix_finger_equals_plain_loop_with_and_without_reference_quirk():
    # a log-normal bulk around 10 (the histogram peak) and a Pareto tail above it
    g = torch.Generator().manual_seed(11)
    bulk = torch.exp(math.log(10.0) + 0.3 * torch.randn(300, generator=g, dtype=torch.float64))
    eigs = torch.cat([bulk, 20.0 * pareto(2.5, 100, seed=12)])
    lam = sorted(eigs.tolist())
    peak, upper = _fix_finger_window(lam, bins=100)
    paper = _scan_reference(lam, 0.95 * peak, upper)
    quirk = _scan_reference(lam, math.log10(0.95 * peak), upper)  # the official lower bound
    assert abs(paper - quirk) > 1e-3  # the two windows differ on this spectrum
    assert hill_alpha(eigs, fit="fix_finger").item() == pytest.approx(paper, rel=1e-9)
    got_quirk = hill_alpha(eigs, fit="fix_finger", reference_quirks=True).item()
    assert got_quirk == pytest.approx(quirk, rel=1e-9)


def test_batch_equals_rows():
    stack = torch.stack([pareto(a, 300, seed=s) for s, a in enumerate([2.0, 3.0, 5.0])])
    for fit in ("median", "goodness_of_fit", "fix_finger"):
        batch = fit_power_law(stack, fit=fit)
        for b in range(3):
            row = fit_power_law(stack[b], fit=fit)
            for got, want in zip(batch, row):
                torch.testing.assert_close(got[b], want, rtol=1e-12, atol=0.0)


def test_errors():
    with pytest.raises(ValueError, match="choose one of"):
        hill_alpha(torch.rand(10) + 1, fit="ks")
    with pytest.raises(ValueError, match="at least 2"):
        hill_alpha(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        hill_alpha(torch.rand(2, 3, 4))
