"""Mix-LN against a hand-written Post-LN / Pre-LN forward."""

import pytest
import torch
import transformers as T

from layerwise_core import tiny_llama, tiny_qwen2
from ln_scaling import apply_layernorm_scaling, apply_mix_ln, post_ln_layer_count


def manual_mix_ln_logits(model, ids, post):
    inner = model.model
    h = inner.embed_tokens(ids)
    rope = inner.rotary_emb(h, torch.arange(ids.shape[1])[None])
    for index, layer in enumerate(inner.layers):
        if index < post:  # h = N_a(x + Attn(x)); out = N_f(h + MLP(h))
            a = layer.self_attn(hidden_states=h, attention_mask=None, position_embeddings=rope)[0]
            h = layer.post_attention_layernorm(h + a)
            h = layer.post_feedforward_layernorm(h + layer.mlp(h))
        else:
            x = layer.input_layernorm(h)
            h = (
                h
                + layer.self_attn(hidden_states=x, attention_mask=None, position_embeddings=rope)[0]
            )
            h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(inner.norm(h))


def test_post_ln_count():
    assert post_ln_layer_count(12, 0.25) == 3 and post_ln_layer_count(24, 0.25) == 6
    assert post_ln_layer_count(7, 0.25) == 1
    with pytest.raises(ValueError):
        post_ln_layer_count(12, 1.5)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
def test_logits_equal_hand_written_forward(factory):
    model = factory(num_hidden_layers=8)
    apply_mix_ln(model)
    assert model.config.mix_ln_post_layers == 2
    with torch.no_grad():
        for layer in model.model.layers[
            :2
        ]:  # new norms start at ones: perturb so the test can fail
            layer.post_feedforward_layernorm.weight.normal_(1.0, 0.2)
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).logits, manual_mix_ln_logits(model, ids, 2), atol=1e-5, rtol=1e-5
        )


def test_extra_norms_registered_ones_and_no_unused_parameters():
    model = tiny_llama(num_hidden_layers=4)
    apply_mix_ln(model, 0.5)
    keys = set(model.state_dict())
    assert "model.layers.1.post_feedforward_layernorm.weight" in keys
    assert "model.layers.2.post_feedforward_layernorm.weight" not in keys
    assert "model.layers.0.input_layernorm.weight" not in keys  # unused in Post-LN blocks: removed
    assert torch.equal(model.model.layers[0].post_feedforward_layernorm.weight, torch.ones(32))
    ids = torch.randint(0, 128, (2, 6))
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP-safe: nothing unused


def test_combination_and_errors():
    model = tiny_llama(num_hidden_layers=4)
    apply_mix_ln(model, 0.25)
    apply_layernorm_scaling(model)
    assert not hasattr(model.model.layers[0].post_attention_layernorm, "_lns_scale")
    assert model.model.layers[3].input_layernorm._lns_scale == pytest.approx(0.5)
    with pytest.raises(ValueError, match="already applied"):
        apply_mix_ln(model)
    lns_first = tiny_llama()
    apply_layernorm_scaling(lns_first)
    with pytest.raises(ValueError, match="apply Mix-LN first"):
        apply_mix_ln(lns_first)
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    with pytest.raises(ValueError, match="gpt2"):
        apply_mix_ln(gpt2)


def test_hooks_on_the_identity_input_norm_see_the_block_input():
    # tools that hook a block's input norm (depth-probe's attention-input capture) keep working
    model = apply_mix_ln(tiny_llama(num_hidden_layers=4), 0.5)
    seen, inputs = {}, {}
    for index, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(
            lambda m, a, out, index=index: seen.__setitem__(index, out)
        )
        layer.register_forward_pre_hook(
            lambda m, a, kw, index=index: inputs.__setitem__(
                index, (*a, kw.get("hidden_states"))[0]
            ),
            with_kwargs=True,
        )
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 5)))
    assert sorted(seen) == [0, 1, 2, 3]
    for index in (0, 1):  # Post-LN blocks: the attention input is the block input itself
        assert torch.equal(seen[index], inputs[index])
