"""capture_residual_stream against a manual layer-by-layer forward written from the equations."""

import pytest
import torch

from layerwise_core import (
    capture_residual_stream,
    find_decoder,
    tiny_llama,
    tiny_mixtral,
    tiny_qwen2,
)


def manual_forward(model, ids):
    """h_{l+1} = h_l + Attn(N_in(h_l)) + MLP(N_post(h_l + a_l)), straight from the modules."""
    inner = model.model
    h = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rope = inner.rotary_emb(h, positions)
    record = {"inputs": [], "attn": [], "mlp": [], "outputs": []}
    for layer in inner.layers:
        record["inputs"].append(h)
        a = layer.self_attn(
            hidden_states=layer.input_layernorm(h), attention_mask=None, position_embeddings=rope
        )[0]
        m = layer.mlp(layer.post_attention_layernorm(h + a))
        m = m[0] if isinstance(m, tuple) else m
        record["attn"].append(a)
        record["mlp"].append(m)
        h = h + a + m
        record["outputs"].append(h)
    logits = model.lm_head(inner.norm(h))
    return record, logits


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mixtral])
def test_capture_equals_manual_forward(factory):
    model = factory(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    stream = capture_residual_stream(model, ids)
    with torch.no_grad():
        manual, logits = manual_forward(model, ids)
    for l in range(3):
        torch.testing.assert_close(stream.inputs[l], manual["inputs"][l])
        torch.testing.assert_close(stream.attn_outputs[l], manual["attn"][l])
        torch.testing.assert_close(stream.mlp_outputs[l], manual["mlp"][l])
        torch.testing.assert_close(stream.outputs[l], manual["outputs"][l])
    torch.testing.assert_close(stream.logits, logits)
    assert len(stream.hidden_states) == 4


def test_final_norm_trap():
    """HF's last hidden state is AFTER the final norm; ours is before, and both are reported."""
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 8))
    stream = capture_residual_stream(model, ids)
    with torch.no_grad():
        hf = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hf[-1], stream.final_norm_output)
    assert not torch.allclose(hf[-1], stream.outputs[-1])
    torch.testing.assert_close(hf[0], stream.inputs[0])


def test_last_token_with_left_and_right_padding():
    model = tiny_llama()
    ids = torch.randint(1, 128, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    full = capture_residual_stream(model, ids, attention_mask=mask)
    last = capture_residual_stream(model, ids, attention_mask=mask, positions="last")
    for l in range(2):
        torch.testing.assert_close(last.outputs[l][0], full.outputs[l][0, 5])
        torch.testing.assert_close(last.outputs[l][1], full.outputs[l][1, 3])
    torch.testing.assert_close(last.logits[1], full.logits[1, 3])


def test_reduce_on_the_fly_and_layer_subset():
    model = tiny_llama(num_hidden_layers=4)
    ids = torch.randint(0, 128, (2, 5))
    full = capture_residual_stream(model, ids)
    part = capture_residual_stream(
        model, ids, layers=[1, 3], reduce=lambda h: h.var(-1), kinds=("outputs",)
    )
    assert part.outputs[0] is None and part.inputs[1] is None
    torch.testing.assert_close(part.outputs[3], full.outputs[3].var(-1))
    assert part.stack("outputs").shape == (2, 2, 5)


def test_logits_false_skips_the_head():
    model = tiny_llama()
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    stream = capture_residual_stream(model, torch.randint(0, 128, (1, 4)), logits=False)
    handle.remove()
    assert calls == [] and stream.logits is None and stream.outputs[-1] is not None
    assert all(not h._forward_hooks for h in find_decoder(model).layers)  # hooks removed


def test_grad_mode_keeps_graph_and_bad_arguments():
    model = tiny_llama()
    stream = capture_residual_stream(model, torch.randint(0, 128, (1, 4)), grad=True)
    stream.outputs[-1].sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    with pytest.raises(ValueError, match="out of range"):
        capture_residual_stream(model, torch.randint(0, 128, (1, 4)), layers=[5])
    with pytest.raises(ValueError, match="unknown kinds"):
        capture_residual_stream(model, torch.randint(0, 128, (1, 4)), kinds=("hidden",))
