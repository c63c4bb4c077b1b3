import math

import pytest
import torch

from depth_probe import DepthCapture, output_variance, residual_contributions
from layerwise_core import tiny_llama


def test_constructed_sublayer_outputs_give_the_known_ratios_and_cosines(stream_from_hidden):
    torch.manual_seed(0)
    h = torch.randn(2, 4, 16)
    a = torch.randn(2, 4, 16)
    a = a - (a * h).sum(-1, keepdim=True) / h.pow(2).sum(-1, keepdim=True) * h
    a = a / a.norm(dim=-1, keepdim=True) * h.norm(dim=-1, keepdim=True)  # a ⟂ h, |a| = |h|
    m = -(h + a) / 2  # erases half of the stream
    h_next = h + a + m
    capture = DepthCapture(
        stream_from_hidden([h, h_next], attn=[a], mlp=[m]), torch.ones(2, 4, dtype=torch.bool)
    )
    rc = residual_contributions(capture)
    expected = {
        "attn_ratio": 1.0,
        "attn_cos": 0.0,
        "mlp_ratio": 0.5,
        "mlp_cos": -1.0,
        "block_ratio": math.sqrt(2) / 2,  # |a + m| = |(a - h)/2| = sqrt(2)|h|/2
        "block_cos": 1 / math.sqrt(2),  # h_next = (h + a)/2
    }
    for name, value in expected.items():
        assert getattr(rc, name).item() == pytest.approx(value, abs=1e-5), name


def test_ratios_on_a_model_match_the_hooked_sublayer_outputs():
    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (2, 5))
    rc = residual_contributions(model, ids)
    # independent path: run block 0 by hand from HF's hidden state h_0
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        h0 = out.hidden_states[0]
        block = model.model.layers[0]
        position_embeddings = model.model.rotary_emb(h0, torch.arange(5)[None])
        mask = torch.full((5, 5), float("-inf")).triu(1)[None, None]
        a, _ = block.self_attn(
            block.input_layernorm(h0), position_embeddings=position_embeddings, attention_mask=mask
        )
        m = block.mlp(block.post_attention_layernorm(h0 + a))
    ratio = (a.norm(dim=-1) / h0.norm(dim=-1)).mean()
    mlp_ratio = (m.norm(dim=-1) / (h0 + a).norm(dim=-1)).mean()
    assert rc.attn_ratio[0].item() == pytest.approx(ratio.item(), rel=1e-4)
    assert rc.mlp_ratio[0].item() == pytest.approx(mlp_ratio.item(), rel=1e-4)
    torch.testing.assert_close(h0 + a + m, out.hidden_states[1], atol=1e-5, rtol=1e-4)


def test_output_variance_is_the_variance_of_each_block_output_over_real_tokens():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4])
    var = output_variance(model, ids, mask)
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(2):  # h_1, h_2 (h_3 in HF is after the final norm)
        h = hidden[layer + 1]
        values = [h[b, t].var() for b in range(2) for t in range(6) if mask[b, t]]
        assert var[layer].item() == pytest.approx(torch.stack(values).mean().item(), rel=1e-5)
