"""CoEMLPConfig / MoEMLPConfig: the paper's defaults, equal to the HF CoEConfig's; `build` makes the
model the integration's hand mapping made (same config, same weights from the same seed) with the
parameter count derived by hand; impossible values are refused naming the field."""

import inspect

import pytest
import torch
from transformers import LlamaConfig

from coe_moe import CoEConfig, CoEForCausalLM, CoEMLPConfig, MoEMLPConfig
from layerwise_core import ConfigError, llama_config


def test_defaults_equal_the_hf_config_defaults():
    params = inspect.signature(CoEConfig).parameters
    assert set(CoEMLPConfig.model_fields) <= set(params)
    for name, field in CoEMLPConfig.model_fields.items():
        if name == "moe_intermediate_size":
            # None: a quarter of the Llama config's intermediate_size; CoEConfig stands alone and
            # takes the paper's 704 (at hidden 1024)
            assert field.default is None and params[name].default == 704
            continue
        assert field.default == params[name].default, name


def test_the_papers_values():
    coe, moe = CoEMLPConfig(), MoEMLPConfig()
    assert (coe.num_experts, coe.num_shared_experts, coe.aux_loss_coef) == (63, 1, 0.001)
    assert (coe.top_k, coe.num_iterations) == (4, 2)
    assert (moe.top_k, moe.num_iterations) == (8, 1)
    # the iso-compute pair: as many routed expert calls per token
    assert coe.top_k * coe.num_iterations == moe.top_k * moe.num_iterations == 8
    assert list(MoEMLPConfig.model_fields) == list(CoEMLPConfig.model_fields)
    for name in CoEMLPConfig.model_fields.keys() - {"top_k", "num_iterations"}:
        assert getattr(coe, name) == getattr(moe, name), name


def _hand_mapping(llama, init_std, mlp, num_experts, top_k, moe_width, iterations):
    """integration/src/layerwise/train/model.py `_build_moe_model` as of commit f6ee4fc."""
    return CoEConfig(
        vocab_size=llama.vocab_size,
        hidden_size=llama.hidden_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        max_position_embeddings=llama.max_position_embeddings,
        rms_norm_eps=llama.rms_norm_eps,
        rope_parameters=llama.rope_parameters,
        tie_word_embeddings=llama.tie_word_embeddings,
        initializer_range=init_std,
        eos_token_id=llama.eos_token_id,
        moe_intermediate_size=moe_width or llama.intermediate_size // 4,
        num_experts=num_experts,
        num_shared_experts=1,
        top_k=top_k,
        num_iterations=1 if mlp == "moe" else iterations,
        aux_loss_coef=0.001,
    )


@pytest.mark.parametrize(
    ("config", "mlp", "moe_width"),
    [
        (CoEMLPConfig(num_experts=4, top_k=2), "coe", None),  # width: 176 // 4
        (MoEMLPConfig(num_experts=4, top_k=2, moe_intermediate_size=16), "moe", 16),
    ],
)
def test_build_equals_the_hand_mapping(config, mlp, moe_width):
    llama = llama_config("llama-tiny", vocab_size=96, eos_token_id=3, max_position_embeddings=128)
    torch.manual_seed(0)
    built = config.build(llama, init_std=0.01)
    torch.manual_seed(0)
    hand = CoEForCausalLM(_hand_mapping(llama, 0.01, mlp, 4, 2, moe_width, 2))
    assert isinstance(built, CoEForCausalLM)
    assert built.config.to_dict() == hand.config.to_dict()
    assert built.config.moe_intermediate_size == (moe_width or 44)
    assert built.config.num_iterations == (2 if mlp == "coe" else 1)
    state, hand_state = built.state_dict(), hand.state_dict()
    assert list(state) == list(hand_state)
    for key, value in hand_state.items():
        assert torch.equal(state[key], value), key


def test_build_keeps_what_the_llama_config_says():
    # fields the hand mapping dropped: head_dim, attention bias, activation, token ids
    llama = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True,
        hidden_act="gelu", bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    config = CoEMLPConfig(num_experts=4).hf_config(llama, init_std=0.05)
    assert (config.head_dim, config.attention_bias, config.hidden_act) == (16, True, "gelu")
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 0)
    assert (config.initializer_range, config.moe_intermediate_size) == (0.05, 16)
    attn = CoEForCausalLM(config).model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 16, 32) and attn.q_proj.bias is not None


def _param_count(vocab, hidden, layers, heads, kv_heads, experts, width, shared, routers):
    """Parameters of a CoE model, derived by hand (no biases, untied embeddings)."""
    head = hidden // heads
    attn = 2 * hidden * heads * head + 2 * hidden * kv_heads * head  # q, o and k, v
    moe = experts * 3 * width * hidden + 3 * hidden * shared * width + routers * experts * hidden
    return 2 * vocab * hidden + layers * (attn + moe + 2 * hidden) + hidden


@pytest.mark.parametrize(("config", "routers"), [(CoEMLPConfig(), 2), (MoEMLPConfig(), 1)])
def test_parameter_count_of_the_papers_model(config, routers):
    # the paper's model with standard attention: hidden 1024, 4 layers, 8 heads, vocab 102400,
    # 63 + 1 experts of width 704 (given here: the paper's dense width is not a Llama's 4 x 704)
    llama = LlamaConfig(
        vocab_size=102400, hidden_size=1024, intermediate_size=5472, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8,
    )  # fmt: skip
    with torch.device("meta"):
        model = config.model_copy(update={"moe_intermediate_size": 704}).build(llama)
    got = sum(p.numel() for p in model.parameters())
    assert got == _param_count(102400, 1024, 4, 8, 8, 63, 704, 1, routers)


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (
            CoEMLPConfig,
            {"num_experts": 2},
            "top_k must be between 1 and num_experts \\(2\\), got 4",
        ),
        (MoEMLPConfig, {"num_iterations": 2}, "field 'num_iterations'"),
        (CoEMLPConfig, {"num_iterations": 0}, "field 'num_iterations'"),
        (CoEMLPConfig, {"aux_loss_coef": -0.1}, "field 'aux_loss_coef'"),
        (CoEMLPConfig, {"moe_intermediate_size": 0}, "field 'moe_intermediate_size'"),
        (CoEMLPConfig, {"topk": 2}, "did you mean 'top_k'"),
    ],
)
def test_impossible_values_are_refused(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_dict(data)
