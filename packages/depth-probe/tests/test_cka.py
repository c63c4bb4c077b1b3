import pytest
import torch

from depth_probe import capture_depth, cka_matrix, linear_cka
from layerwise_core import tiny_llama


def _hsic_cka(x, y):
    """Kornblith et al. eq. 3 with linear kernels: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),
    HSIC(K, L) = tr(K H L H) with the centring matrix H (an independent route to the same value)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))


def test_self_similarity_is_one_and_invariances_hold():
    torch.manual_seed(0)
    x = torch.randn(50, 12)
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q).item() == pytest.approx(1.0, abs=1e-10)  # orthogonal transform
    assert linear_cka(x, 7.5 * x).item() == pytest.approx(1.0, abs=1e-12)  # isotropic scaling
    assert linear_cka(x, x + 3.0).item() == pytest.approx(1.0, abs=1e-10)  # centring
    y = torch.randn(50, 20)
    assert linear_cka(x, y).item() == pytest.approx(_hsic_cka(x, y).item(), abs=1e-10)
    assert linear_cka(x, y @ torch.randn(20, 20)).item() != pytest.approx(linear_cka(x, y).item())


def test_matrix_equals_pairwise_cka_on_the_gram_of_either_side():
    model = tiny_llama(num_hidden_layers=3)
    for rows in ((1, 6), (4, 20)):  # 6 tokens < 32 features, 80 tokens > 32 features
        ids = torch.randint(0, 128, rows)
        capture = capture_depth(model, ids)
        matrix = cka_matrix(capture)
        hidden = [h.reshape(-1, 32) for h in capture.hidden_states]
        expected = torch.tensor([[_hsic_cka(a, b).item() for b in hidden] for a in hidden])
        torch.testing.assert_close(matrix, expected.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(matrix.diagonal(), torch.ones(4))
        torch.testing.assert_close(matrix, matrix.T)


def test_padding_rows_are_left_out():
    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (2, 5))
    mask = torch.tensor([[1] * 5, [1] * 2 + [0] * 3])
    capture = capture_depth(model, ids, mask)
    hidden = [capture.real_tokens(h) for h in capture.hidden_states]
    assert hidden[0].shape[0] == 7
    expected = linear_cka(hidden[0], hidden[2]).float()
    assert cka_matrix(capture)[0, 2].item() == pytest.approx(expected.item(), abs=1e-6)
