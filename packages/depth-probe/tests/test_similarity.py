import pytest
import torch

from depth_probe import DepthCapture, capture_depth, similarity_matrix
from layerwise_core import tiny_llama


def _loop_reference(outputs, mask, variant):
    """Per-token loops over the super-outlier study's three definitions."""
    tokens = [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
    vecs = [[o[b, t].double() for b, t in tokens] for o in outputs]  # [layer][token]
    n = len(outputs)
    if variant == "pooled":
        means = [torch.stack(v).mean(0) for v in vecs]
        return torch.tensor(
            [
                [
                    (means[i] @ means[j] / (means[i].norm() * means[j].norm())).item()
                    for j in range(n)
                ]
                for i in range(n)
            ]
        )
    if variant == "per_token_detrended":
        for k in range(len(tokens)):
            column = torch.stack([vecs[i][k] for i in range(n)])
            mu, sigma = column.mean(0), column.std(0).clamp_min(1e-8)
            for i in range(n):
                vecs[i][k] = (vecs[i][k] - mu) / sigma
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(
                vecs[i][k] @ vecs[j][k] / (vecs[i][k].norm() * vecs[j][k].norm())
                for k in range(len(tokens))
            ) / len(tokens)
    return out


@pytest.mark.parametrize("variant", ["pooled", "per_token", "per_token_detrended"])
def test_each_variant_matches_a_per_token_loop(variant):
    model = tiny_llama(num_hidden_layers=5)
    ids = torch.randint(0, 128, (2, 5))
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    capture = capture_depth(model, ids, mask)
    got = similarity_matrix(capture, variant=variant)
    assert got.shape == (4, 4)  # outputs of blocks 0..L-2
    expected = _loop_reference(capture.stream.outputs[:-1], mask, variant)
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


def test_a_massive_channel_saturates_pooled_cosine_until_it_is_zeroed(stream_from_hidden):
    torch.manual_seed(0)
    hidden = [torch.randn(2, 6, 16) for _ in range(5)]
    for h in hidden:
        h[..., 5] = 1000.0  # the same huge channel in every layer
    capture = DepthCapture(stream_from_hidden(hidden), torch.ones(2, 6, dtype=torch.bool))
    pooled = similarity_matrix(capture, variant="pooled")
    assert pooled.min() > 0.999
    zeroed = similarity_matrix(capture, variant="pooled", zero_channels=[5])
    dropped = [torch.cat([h[..., :5], h[..., 6:]], -1) for h in hidden]
    without = similarity_matrix(
        DepthCapture(stream_from_hidden(dropped), torch.ones(2, 6, dtype=torch.bool)),
        variant="pooled",
    )
    torch.testing.assert_close(zeroed, without)
    assert zeroed[0, 1] < 0.9


def test_unknown_variant_is_an_error():
    model = tiny_llama(num_hidden_layers=2)
    with pytest.raises(ValueError, match="variant"):
        similarity_matrix(model, torch.randint(0, 128, (1, 3)), variant="cosine")


def test_detrending_one_block_output_is_undefined_not_a_warning():
    # 2 blocks -> one compared output: z-scoring a one-layer trajectory has no spread (the loop
    # reference divides by a NaN std); the other variants are defined (a 1x1 matrix of 1).
    import warnings

    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = similarity_matrix(model, ids, variant="per_token_detrended")
        plain = similarity_matrix(model, ids, variant="per_token")
    assert got.shape == (1, 1) and torch.isnan(got).all()
    torch.testing.assert_close(plain, torch.ones(1, 1))
