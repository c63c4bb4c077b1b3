"""find_decoder on a tiny model of every supported family, built from config."""

import pytest
import torch
import transformers as T
from torch import nn

from layerwise_core import DecoderSpec, capture_residual_stream, find_decoder, tiny_llada_style

COMMON = dict(
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
MOE = dict(
    num_local_experts=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
)

# family -> (config class, model class, config kwargs, expected pre-attn norm, pre-MLP norm, attn type)
FAMILIES = {
    "llama": (
        T.LlamaConfig,
        T.LlamaForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "mistral": (
        T.MistralConfig,
        T.MistralForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "qwen2": (
        T.Qwen2Config,
        T.Qwen2ForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "qwen3": (
        T.Qwen3Config,
        T.Qwen3ForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "gemma": (
        T.GemmaConfig,
        T.GemmaForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "gemma2": (
        T.Gemma2Config,
        T.Gemma2ForCausalLM,
        COMMON,
        "input_layernorm",
        "pre_feedforward_layernorm",
    ),
    "gemma3_text": (
        T.Gemma3TextConfig,
        T.Gemma3ForCausalLM,
        COMMON,
        "input_layernorm",
        "pre_feedforward_layernorm",
    ),
    "olmo2": (T.Olmo2Config, T.Olmo2ForCausalLM, COMMON, None, None),
    "phi3": (
        T.Phi3Config,
        T.Phi3ForCausalLM,
        COMMON,
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "gpt2": (
        T.GPT2Config,
        T.GPT2LMHeadModel,
        dict(vocab_size=64, n_embd=32, n_layer=3, n_head=4, bos_token_id=None, eos_token_id=None),
        "ln_1",
        "ln_2",
    ),
    "gpt_neox": (
        T.GPTNeoXConfig,
        T.GPTNeoXForCausalLM,
        dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            bos_token_id=None,
            eos_token_id=None,
        ),
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "mixtral": (
        T.MixtralConfig,
        T.MixtralForCausalLM,
        {**COMMON, **MOE},
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "qwen2_moe": (
        T.Qwen2MoeConfig,
        T.Qwen2MoeForCausalLM,
        {**COMMON, **MOE},
        "input_layernorm",
        "post_attention_layernorm",
    ),
    "qwen3_moe": (
        T.Qwen3MoeConfig,
        T.Qwen3MoeForCausalLM,
        {**COMMON, **MOE},
        "input_layernorm",
        "post_attention_layernorm",
    ),
}


def build(family):
    config_cls, model_cls, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs)).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_find_decoder_maps_every_family(family):
    model = build(family)
    _, _, _, attn_norm, mlp_norm = FAMILIES[family]
    dmap = find_decoder(model)
    assert dmap.family == family
    assert len(dmap) == 3
    assert dmap.embed_tokens is model.get_input_embeddings()
    assert dmap.lm_head is model.get_output_embeddings()
    for layer in dmap:
        assert layer.block is dmap.layers[layer.index]
        assert layer.attn_norm_name == attn_norm and layer.mlp_norm_name == mlp_norm
        if attn_norm is not None:
            assert layer.attn_norm is getattr(layer.block, attn_norm)
        assert "Attention" in type(layer.attn).__name__
        assert layer.is_moe == (family in ("mixtral", "qwen2_moe", "qwen3_moe"))
    # the final norm is what produces the last hidden state HF returns
    ids = torch.randint(0, 64, (2, 5))
    stream = capture_residual_stream(model, ids)
    with torch.no_grad():
        hf = model(ids, output_hidden_states=True)
    torch.testing.assert_close(dmap.final_norm(stream.outputs[-1]), hf.hidden_states[-1])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_contributions_sum_to_block_output(family):
    """h_{l+1} = h_l + a_l + m_l: the mapped contribution modules are exactly what is added."""
    model = build(family)
    stream = capture_residual_stream(model, torch.randint(0, 64, (2, 6)))
    for l in range(3):
        total = stream.inputs[l] + stream.attn_outputs[l] + stream.mlp_outputs[l]
        torch.testing.assert_close(total, stream.outputs[l], atol=1e-5, rtol=1e-5)
        if l + 1 < 3:
            torch.testing.assert_close(stream.inputs[l + 1], stream.outputs[l])


def test_llada_style_blocks():
    model = tiny_llada_style(num_hidden_layers=3)
    dmap = find_decoder(model)
    assert dmap.family == "llada" and len(dmap) == 3
    assert dmap[1].attn_norm is model.model.transformer.blocks[1].attn_norm
    assert dmap[1].mlp_norm is model.model.transformer.blocks[1].ff_norm
    assert dmap.lm_head is model.model.transformer.ff_out
    stream = capture_residual_stream(model, torch.randint(0, 128, (2, 6)))
    for l in range(3):
        torch.testing.assert_close(
            stream.inputs[l] + stream.attn_outputs[l] + stream.mlp_outputs[l], stream.outputs[l]
        )


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.stack = nn.ModuleList(
            nn.ModuleDict({"mix": nn.Linear(8, 8), "ffn": nn.Linear(8, 8)}) for _ in range(2)
        )


def test_unknown_model_error_names_what_was_found_and_the_fix():
    with pytest.raises(ValueError) as info:
        find_decoder(Custom())
    message = str(info.value)
    assert "stack" in message and "mix" in message and "DecoderSpec" in message


def test_explicit_spec_and_overrides():
    model = Custom()
    spec = DecoderSpec(
        embed_tokens="emb",
        layers="stack",
        attn="mix",
        mlp="ffn",
        attn_norm=None,
        mlp_norm=None,
        final_norm=None,
        lm_head=None,
    )
    dmap = find_decoder(model, spec=spec)
    assert dmap.embed_tokens is model.emb and dmap[1].mlp is model.stack[1]["ffn"]
    with pytest.raises(ValueError, match="does not match"):
        find_decoder(model, spec=spec, mlp="missing")
    # a single-field override of a detected spec
    llama = build("llama")
    assert (
        find_decoder(llama, mlp_norm="input_layernorm")[0].mlp_norm
        is llama.model.layers[0].input_layernorm
    )
