"""LNS logits against a hand-written forward that follows the paper's equations layer by layer."""

import math

import pytest
import torch
import transformers as T

from layerwise_core import tiny_llama, tiny_mixtral, tiny_qwen2
from ln_scaling import apply_layernorm_scaling, is_layernorm_scaled, remove_layernorm_scaling
from ln_scaling.layernorm_scaling import _fused_rms_forward, _generic_forward


def manual_lns_logits(model, ids):
    """h = x + Attn(N_in(x)/sqrt(l)); out = h + MLP(N_post(h)/sqrt(l)); logits = head(N_f(h_L))."""
    inner = model.model
    h = inner.embed_tokens(ids)
    rope = inner.rotary_emb(h, torch.arange(ids.shape[1])[None])
    for index, layer in enumerate(inner.layers):
        s = 1 / math.sqrt(index + 1)
        # the norms' class forward (not the patched instance forward): the unscaled equations
        n_in = type(layer.input_layernorm).forward(layer.input_layernorm, h) * s
        a = layer.self_attn(hidden_states=n_in, attention_mask=None, position_embeddings=rope)[0]
        h = h + a
        n_post = type(layer.post_attention_layernorm).forward(layer.post_attention_layernorm, h) * s
        m = layer.mlp(n_post)
        h = h + (m[0] if isinstance(m, tuple) else m)
    return model.lm_head(inner.norm(h))


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mixtral])
def test_logits_equal_hand_written_forward(factory):
    model = factory(num_hidden_layers=4)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        apply_layernorm_scaling(model)
        after = model(ids).logits
        expected = manual_lns_logits(model, ids)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)  # the scaling changes the function
    assert model.model.layers[0].input_layernorm.forward.__func__ is _fused_rms_forward


def hook_reference(model):
    """An independent path: forward hooks that multiply each pre-norm's output by 1/sqrt(l)."""
    from layerwise_core import find_decoder

    handles = []
    for layer in find_decoder(model):
        s = 1 / math.sqrt(layer.index + 1)
        for norm in (layer.attn_norm, layer.mlp_norm):
            handles.append(norm.register_forward_hook(lambda mod, args, out, s=s: out * s))
    return handles


FAMILIES = {
    "gemma2": lambda: T.Gemma2ForCausalLM(
        T.Gemma2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
    ),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4)),
    "gpt_neox": lambda: T.GPTNeoXForCausalLM(
        T.GPTNeoXConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            bos_token_id=None,
            eos_token_id=None,
        )
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_families_match_hook_reference(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    with torch.no_grad():  # Gemma norms start at 0 (weight = 1 + w): perturb so the test can fail
        for module in model.modules():
            if "Norm" in type(module).__name__:
                module.weight.normal_(0.0, 0.3)
    ids = torch.randint(0, 64, (2, 6))
    handles = hook_reference(model)
    expected = model(ids).logits
    for h in handles:
        h.remove()
    apply_layernorm_scaling(model)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    norm = model.get_submodule(
        {
            "gemma2": "model.layers.2.input_layernorm",
            "gpt2": "transformer.h.2.ln_1",
            "gpt_neox": "gpt_neox.layers.2.input_layernorm",
        }[family]
    )
    assert norm.forward.__func__ is (_fused_rms_forward if family == "gemma2" else _generic_forward)
    assert norm._lns_scale == pytest.approx(1 / math.sqrt(3))


def test_gradients_match_hook_reference():
    ids = torch.randint(0, 128, (2, 6))
    a, b = tiny_llama(num_hidden_layers=3), tiny_llama(num_hidden_layers=3)
    handles = hook_reference(a)
    apply_layernorm_scaling(b)
    a(ids, labels=ids).loss.backward()
    b(ids, labels=ids).loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=name)
    for h in handles:
        h.remove()


def test_state_dict_unchanged_scale_not_a_buffer_and_survives_to_empty():
    model = tiny_llama(num_hidden_layers=3)
    keys = list(model.state_dict())
    buffers = [n for n, _ in model.named_buffers()]
    apply_layernorm_scaling(model)
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_buffers()] == buffers
    assert model.config.layernorm_scaling is True
    with torch.device("meta"):
        meta = tiny_llama(num_hidden_layers=3)
    apply_layernorm_scaling(meta)
    meta.to_empty(device="cpu")
    assert meta.model.layers[2].post_attention_layernorm._lns_scale == pytest.approx(
        1 / math.sqrt(3)
    )


def test_double_application_remove_and_unsupported():
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        before = model(ids).logits
    apply_layernorm_scaling(model)
    with pytest.raises(ValueError, match="already applied"):
        apply_layernorm_scaling(model)
    remove_layernorm_scaling(model)
    assert not is_layernorm_scaled(model) and not hasattr(model.config, "layernorm_scaling")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not applied"):
        remove_layernorm_scaling(model)
    olmo2 = T.Olmo2ForCausalLM(
        T.Olmo2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            pad_token_id=None,
            eos_token_id=None,
        )
    )
    with pytest.raises(ValueError, match="olmo2"):
        apply_layernorm_scaling(olmo2)


@pytest.mark.parametrize("what", ["class_forward_back", "other_forward_bound"])
def test_rebind_restores_the_scale_that_kernelization_drops(what):
    # transformers >= 5.25 kernelizes after from_pretrained: on CPU it pops the instance forward
    # (the class forward comes back); with a hub kernel it binds the kernel's forward instead
    import types

    from ln_scaling.layernorm_scaling import rebind_layernorm_scaling

    torch.manual_seed(0)
    model = apply_layernorm_scaling(tiny_llama(num_hidden_layers=3)).eval()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
        norms = [m for m in model.modules() if hasattr(m, "_lns_scale")]
        for norm in norms:
            if what == "class_forward_back":
                norm.__dict__.pop("forward")
            else:  # the unscaled RMSNorm maths under another bound method, as a hub kernel
                norm.forward = types.MethodType(type(norm).forward, norm)
        dropped = model(ids).logits
        assert (dropped - expected).abs().max() > 1e-3  # the scale is really gone
        assert rebind_layernorm_scaling(model) == len(norms)
        assert rebind_layernorm_scaling(model) == 0  # idempotent
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-6)
