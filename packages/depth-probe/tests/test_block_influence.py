import itertools
import math

import pytest
import torch

from depth_probe import DepthCapture, block_influence, capture_depth, lowest_influence_layers
from layerwise_core import tiny_llama


def test_identity_blocks_have_zero_influence(identity_blocks):
    model = identity_blocks(tiny_llama(num_hidden_layers=4), [1, 2])
    bi = block_influence(model, torch.randint(0, 128, (2, 8)))
    assert bi.shape == (4,)
    assert abs(bi[1].item()) < 1e-6 and abs(bi[2].item()) < 1e-6
    assert bi[0] > 1e-3 and bi[3] > 1e-3


def test_orthogonal_update_of_equal_norm_gives_one_minus_inverse_sqrt2(stream_from_hidden):
    torch.manual_seed(0)
    h0 = torch.randn(2, 5, 16)
    u = torch.randn(2, 5, 16)
    u = u - (u * h0).sum(-1, keepdim=True) / h0.pow(2).sum(-1, keepdim=True) * h0  # u ⟂ h0
    u = u / u.norm(dim=-1, keepdim=True) * h0.norm(dim=-1, keepdim=True)
    h1 = h0 + u  # cos(h0, h1) = 1/sqrt(2)
    h2 = 3.0 * h1  # a pure rescale: cos = 1
    capture = DepthCapture(stream_from_hidden([h0, h1, h2]), torch.ones(2, 5, dtype=torch.bool))
    bi = block_influence(capture)
    torch.testing.assert_close(bi, torch.tensor([1 - 1 / math.sqrt(2), 0.0]), atol=1e-6, rtol=0)


def test_matches_a_per_token_loop_and_ignores_padding():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    bi = block_influence(model, ids, mask)
    with torch.no_grad():
        hf = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    hidden = list(hf[:-1])
    hidden.append(capture_depth(model, ids, mask).hidden_states[-1])  # pre-norm h_L
    for layer in range(3):
        cosines = []
        for b in range(2):
            for t in range(6):
                if mask[b, t]:
                    x, y = hidden[layer][b, t], hidden[layer + 1][b, t]
                    cosines.append((x @ y / (x.norm() * y.norm())).item())
        assert bi[layer].item() == pytest.approx(1 - sum(cosines) / len(cosines), abs=1e-6)


def test_reference_quirks_reproduce_the_official_shortgpt_computation():
    model = tiny_llama(num_hidden_layers=3)
    with torch.no_grad():  # a trained final norm rescales channels unevenly (init is all ones)
        model.model.norm.weight.uniform_(0.2, 3.0)
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    ours = block_influence(model, ids, mask, reference_quirks=True)
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # shortgpt/metrics.py::block_influence + ShortGPT.compute_bi, written out from the official code
    expected = []
    for h_in, h_out in itertools.pairwise(hidden):
        x = h_in.reshape(-1, h_in.shape[-1])
        y = h_out.reshape(-1, h_out.shape[-1])
        sim = (x @ y.T) / (x.norm(dim=-1, keepdim=True) * y.norm(dim=-1, keepdim=True))
        expected.append((1 - sim.diagonal().nan_to_num(nan=0.5)).sum())
    torch.testing.assert_close(ours, torch.stack(expected), atol=1e-5, rtol=1e-5)
    # without padding the official sums are 12 x the mean, except at the last layer, where the
    # official code compares h_{L-1} with the final-normed h_L (the final-norm trap)
    clean = block_influence(model, ids)
    quirky = block_influence(model, ids, reference_quirks=True) / 12
    torch.testing.assert_close(quirky[:-1], clean[:-1], atol=1e-6, rtol=1e-5)
    assert abs(clean[-1].item() - quirky[-1].item()) > 1e-3


def test_lowest_influence_layers():
    assert lowest_influence_layers([0.5, 0.1, 0.3, 0.05], 2) == [1, 3]
    assert lowest_influence_layers(torch.tensor([0.2, 0.2, 0.1]), 2) == [0, 2]
    with pytest.raises(ValueError, match="must be in"):
        lowest_influence_layers([0.1], 2)
