"""attention_entropy vs hand-derived values: zero queries give uniform causal attention."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise_core import tiny_llama
from meap import attention_entropy


def uniform_attention_model():
    """q = 0 in every layer: all scores equal, so query q attends uniformly to its visible keys."""
    model = tiny_llama(seed=0, num_hidden_layers=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    return model


def expected_mean(visible: list[list[int]], normalize: bool) -> float:
    values = [
        (1.0 if normalize else math.log(n)) if not normalize or n > 1 else None
        for row in visible
        for n in row
    ]
    values = [v for v in values if v is not None]
    return sum(values) / len(values)


@pytest.mark.parametrize("normalize", [False, True])
def test_uniform_attention_has_log_n_entropy(normalize):
    model = uniform_attention_model()
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    out = attention_entropy(model, ids, normalize=normalize)
    assert out.shape == (3, 4)
    expected = expected_mean([list(range(1, 12))] * 2, normalize)  # query q sees q + 1 keys
    torch.testing.assert_close(out, torch.full((3, 4), expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_padding_queries_and_keys_are_left_out(normalize):
    model = uniform_attention_model()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 6 + [0] * 3, [0] * 4 + [1] * 5])  # right- and left-padded
    out = attention_entropy(model, {"input_ids": ids, "attention_mask": mask}, normalize=normalize)
    expected = expected_mean([list(range(1, 7)), list(range(1, 6))], normalize)
    torch.testing.assert_close(out, torch.full((3, 4), expected), rtol=1e-5, atol=1e-5)


def test_random_model_is_bounded_and_restored():
    model = tiny_llama(seed=2).train()
    implementation = model.config._attn_implementation
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(2))
    out = attention_entropy(model, ids)
    assert out.shape == (2, 4)
    assert (out >= 0).all() and (out <= expected_mean([list(range(1, 17))], False) + 1e-5).all()
    assert model.training and model.config._attn_implementation == implementation
    # sharper queries in layer 0 (same scores x 30): softmax entropy falls with inverse temperature
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(30.0)
    assert (attention_entropy(model, ids)[0] < out[0]).all()
