"""float32 ESDs and alphas agree with float64 (issue 21): every fit, square and rectangular,
random and heavy-tailed matrices.

A float32 Gram matrix has eigenvalues with an absolute error ~eps * lambda_max, so the bottom of an
ill-conditioned spectrum (a square random matrix: lambda_min / lambda_max ~ 1 / (4 N^2)) is noise;
fix_finger's histogram starts at the smallest eigenvalue, and its alpha moved by up to 15 at
llama-60m scale. `batched_esd` recomputes such matrices in float64.
"""

import pytest
import torch

from spectral_opt import batched_esd, esd, fit_power_law, weight_alphas

SHAPES = [(256, 256), (640, 256), (256, 640)]  # square, tall, wide (N = 256)
KINDS = ["gaussian", "student_t", "power_law_spectrum"]
FITS = ["median", "goodness_of_fit", "fix_finger"]
EIG_RTOL = 1e-4  # the float32 ESD's promise for every eigenvalue (esd.py: N lambda_max / 2^20)


def matrix(shape: tuple[int, int], kind: str, seed: int = 0) -> torch.Tensor:
    """A float32 matrix: N(0, 0.02) entries; Student-t (3 degrees of freedom) entries, heavy-tailed
    like trained weights; or a spectrum lambda ~ Pareto(alpha = 2.5) over ~4 decades."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    if kind == "gaussian":
        return 0.02 * torch.randn(m, n, generator=g)
    if kind == "student_t":  # t_3 = Z / sqrt(chi^2_3 / 3)
        z = torch.randn(4, m, n, generator=g, dtype=torch.float64)
        return (0.02 * z[0] / (z[1:].pow(2).sum(0) / 3).sqrt()).float()
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    lam = torch.rand(k, generator=g, dtype=torch.float64).pow(-1 / 1.5).clamp_max(1e4) * 1e-4
    return ((u * lam.sqrt()) @ v.T).float()


def svd_eigenvalues(w: torch.Tensor) -> torch.Tensor:
    """The float64 reference: squared singular values of the (float32) weights, ascending."""
    return torch.linalg.svdvals(w.double()).pow(2).flip(0)


def cases():
    return [
        pytest.param(shape, kind, id=f"{kind}-{shape[0]}x{shape[1]}")
        for shape in SHAPES
        for kind in KINDS
    ]


@pytest.mark.parametrize(("shape", "kind"), cases())
def test_float32_esd_resolves_every_eigenvalue(shape, kind):
    w = matrix(shape, kind)
    expected = svd_eigenvalues(w)
    got = esd(w)
    assert got.dtype == torch.float32
    rel = ((got.double() - expected).abs() / expected).max().item()
    assert rel < EIG_RTOL, rel


@pytest.mark.parametrize("reference_quirks", [False, True])
@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(("shape", "kind"), cases())
def test_float32_alphas_agree_with_float64(shape, kind, fit, reference_quirks):
    """alpha = 1 + n / D with D = sum_{j >= i} ln(lambda_j / lambda_i) = n / (alpha - 1): a relative
    error delta in each eigenvalue moves D by at most 2 n delta, so alpha by at most
    2 delta (alpha - 1)^2. With delta = EIG_RTOL that is the tolerance (8e-4 at alpha = 3); before
    the fix fix_finger was off by O(1) on these matrices (asserted below)."""
    w = matrix(shape, kind, seed=2)
    expected = fit_power_law(svd_eigenvalues(w), fit, reference_quirks=reference_quirks).alpha
    got = weight_alphas({"w": w}, fit=fit, reference_quirks=reference_quirks)["w"]
    got64 = weight_alphas({"w": w}, fit=fit, dtype=torch.float64, reference_quirks=reference_quirks)
    tolerance = 2 * EIG_RTOL * (expected.item() - 1) ** 2
    assert abs(got - expected.item()) <= tolerance, (got, expected.item())
    assert abs(got64["w"] - expected.item()) <= tolerance, (got64["w"], expected.item())


def test_plain_float32_gram_loses_the_bottom_of_the_spectrum():
    """Singular values over 5 decades (lambda 1e-10 .. 1): the float32 Gram's roundoff, ~1e-7 *
    lambda_max, swamps the 16 smallest eigenvalues (the plain route, `accurate_from >= N`, returns
    noise or the clamp); the default route recomputes in float64 and gets fix_finger's alpha."""
    g = torch.Generator().manual_seed(1)
    n = 128
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = 1e-2 * torch.rand(n, generator=g, dtype=torch.float64).pow(-1 / 1.5).clamp_max(100)
    lam[:16] = 1e-10 * (1 + torch.rand(16, generator=g, dtype=torch.float64))
    w = ((u * lam.sqrt()) @ v.T).float()
    expected = svd_eigenvalues(w)
    plain = esd(w, accurate_from=n).double()
    assert ((plain - expected).abs() / expected)[:16].max() > 0.5
    fixed = esd(w).double()
    assert ((fixed - expected).abs() / expected).max() < EIG_RTOL
    alpha = fit_power_law(expected, "fix_finger").alpha.item()
    got = weight_alphas({"w": w}, fit="fix_finger")["w"]
    assert abs(got - alpha) <= 2 * EIG_RTOL * (alpha - 1) ** 2, (got, alpha)


def _eigvalsh_dtypes(monkeypatch) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    original = torch.linalg.eigvalsh

    def spy(a, *args, **kwargs):
        seen.append(a.dtype)
        return original(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigvalsh", spy)
    return seen


@pytest.mark.parametrize(
    ("shape", "fit", "expected"),
    [
        # the median fit reads lambda_{N/2} and up: resolved in float32 even for a square matrix
        ((128, 128), "median", [torch.float32]),
        # fix_finger reads every eigenvalue: the Cholesky forecast sends a square matrix straight
        # to float64, without a wasted float32 eigvalsh
        ((128, 128), "fix_finger", [torch.float64]),
        # a random 2.5:1 matrix has lambda_min / lambda_max ~ 1 / 17: float32 suffices
        ((320, 128), "fix_finger", [torch.float32]),
    ],
)
def test_float64_only_where_float32_cannot_resolve(monkeypatch, shape, fit, expected):
    w = matrix(shape, "gaussian", seed=2)
    seen = _eigvalsh_dtypes(monkeypatch)
    weight_alphas({"w": w}, fit=fit)
    assert seen == expected


def test_batch_recomputes_only_the_unresolved_matrices(monkeypatch):
    """A stack with one ill-conditioned matrix: float32 for the others, identical to one by one."""
    w = torch.stack([matrix((128, 128), "gaussian", seed=s) for s in range(3)])
    w[1] = matrix((128, 128), "gaussian", seed=1) @ torch.diag(torch.linspace(1, 0.01, 128))
    w[0], w[2] = torch.linalg.qr(w[0])[0] * 0.02, torch.linalg.qr(w[2])[0] * 0.03  # cond(G) = 1
    seen = _eigvalsh_dtypes(monkeypatch)
    got = batched_esd(w)
    assert seen == [torch.float32, torch.float64]
    for b in range(3):
        expected = svd_eigenvalues(w[b])
        assert ((got[b].double() - expected).abs() / expected).max() < EIG_RTOL


def test_accurate_from_is_checked():
    with pytest.raises(ValueError, match="accurate_from must be >= 0"):
        esd(torch.randn(60, 60), accurate_from=-1)
