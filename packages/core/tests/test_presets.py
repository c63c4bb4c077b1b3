"""Preset sizes against the papers' names and a hand-derived parameter formula."""

import pytest
import torch

from layerwise_core import LLAMA_PRESETS, init_normal_, llama_config, llama_param_count, tiny_llama


def count(config):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama-60m", "llama-71m", "llama-130m", "llama-350m", "llama-1b"])
def test_parameter_count_matches_hand_formula(name):
    p = LLAMA_PRESETS[name]
    expected = llama_param_count(p.hidden_size, p.num_hidden_layers, p.intermediate_size, 32000)
    assert count(llama_config(name)) == expected


def test_formula_by_hand_for_60m():
    # embeddings 2 * 32000 * 512; per block 4 * 512^2 + 3 * 512 * 1376 + 2 * 512; final norm 512
    assert (
        llama_param_count(512, 8, 1376, 32000)
        == 2 * 32000 * 512 + 8 * (4 * 512**2 + 3 * 512 * 1376 + 1024) + 512
    )


@pytest.mark.parametrize(
    "name,nominal,tolerance",
    # the papers' names; "1B" is the GaLore config, 1.34B parameters with untied embeddings
    [
        ("llama-60m", 60e6, 0.05),
        ("llama-130m", 130e6, 0.05),
        ("llama-350m", 350e6, 0.06),
        ("llama-1b", 1.34e9, 0.01),
    ],
)
def test_parameter_count_near_paper_name(name, nominal, tolerance):
    assert abs(count(llama_config(name)) / nominal - 1) < tolerance


def test_config_fields_and_overrides():
    cfg = llama_config("llama-130m", vocab_size=1000, num_hidden_layers=3)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (768, 2048, 12)
    assert cfg.num_hidden_layers == 3 and cfg.vocab_size == 1000 and cfg.rms_norm_eps == 1e-6
    assert not cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="llama-60m"):
        llama_config("llama-13b")


def test_unknown_override_is_refused_with_the_closest_field():
    with pytest.raises(ValueError) as info:
        llama_config("llama-tiny", num_hiden_layers=3)
    assert str(info.value).startswith(
        "unknown field 'num_hiden_layers' (did you mean 'num_hidden_layers'?): LlamaConfig has "
        "no such field; its fields are ['architectures', "
    )
    # names that LlamaConfig consumes without declaring them still work
    cfg = llama_config("llama-tiny", rope_theta=5e5, attn_implementation="eager")
    assert cfg.rope_parameters["rope_theta"] == 5e5 and cfg._attn_implementation == "eager"


def test_check_config_fields_prefixes_the_setting():
    from transformers import LlamaConfig

    from layerwise_core import check_config_fields

    check_config_fields(LlamaConfig, {"hidden_size": 8, "rope_theta": 1e4})  # all known
    with pytest.raises(
        ValueError,
        match=r"'model.overrides.hiden_size' \(did you mean "
        r"'model.overrides.hidden_size'\?\)",
    ):
        check_config_fields(LlamaConfig, {"hiden_size": 8}, "model.overrides.")


def test_init_normal_std_and_norms():
    model = tiny_llama(hidden_size=64, intermediate_size=256)
    init_normal_(model, std=0.02)
    weights = torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    )
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert torch.equal(model.model.norm.weight, torch.ones(64))
