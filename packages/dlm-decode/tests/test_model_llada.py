"""The native LLaDA model: logits equal a transformers Llama given the same weights and a full
bidirectional mask (the released LLaDA block is Llama's without the causal mask), no shift,
padding, the checkpoint's names through save/load in a fresh process and from a folder laid out
like the released one, Fast-dLLM's caches on its backbone, and bf16."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from dlm_decode import FastDLLM, as_masked_diffusion_lm, generate
from dlm_decode.adapters import MaskedDiffusionLM, position_ids_from_mask
from dlm_decode.kv_cache import BlockKVCache, cached_logits
from dlm_decode.models.llada import LLaDAConfig, LLaDAModelLM
from layerwise_core.decoder_map import find_decoder

VOCAB, PADDED, MASK = 300, 320, 299  # vocabulary, embedding_size (padded rows), [MASK] id


def tiny_config(**overrides) -> LLaDAConfig:
    fields = dict(
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        n_layers=3,
        mlp_hidden_size=96,
        vocab_size=VOCAB,
        embedding_size=PADDED,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_sequence_length=128,
        mask_token_id=MASK,
        eos_token_id=VOCAB - 2,
        pad_token_id=VOCAB - 2,
    )
    return LLaDAConfig(**{**fields, **overrides})


def tiny_llada(seed: int = 0, std: float = 0.3, **overrides) -> LLaDAModelLM:
    """Random weights, norm weights included (so that swapped norms would show)."""
    torch.manual_seed(seed)
    model = LLaDAModelLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, std)
        model.get_output_embeddings().weight[MASK] = 0.0  # [MASK] (logit 0) is never the argmax
    return model


def llama_reference(model: LLaDAModelLM) -> LlamaForCausalLM:
    """A LlamaForCausalLM with `model`'s weights, renamed by hand from the LLaDA checkpoint names."""
    c = model.config
    config = LlamaConfig(
        vocab_size=c.embedding_size,
        hidden_size=c.d_model,
        intermediate_size=c.mlp_hidden_size,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.max_sequence_length,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    llama = LlamaForCausalLM(config).eval()
    names = {
        "model.transformer.wte.weight": "model.embed_tokens.weight",
        "model.transformer.ln_f.weight": "model.norm.weight",
        "model.transformer.ff_out.weight": "lm_head.weight",
    }
    block = {
        "attn_norm": "input_layernorm",
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "ff_norm": "post_attention_layernorm",
        "ff_proj": "mlp.gate_proj",  # the activated projection
        "up_proj": "mlp.up_proj",
        "ff_out": "mlp.down_proj",
    }
    for i in range(c.n_layers):
        for ours, theirs in block.items():
            names[f"model.transformer.blocks.{i}.{ours}.weight"] = (
                f"model.layers.{i}.{theirs}.weight"
            )
    ours = model.state_dict()
    assert set(ours) == set(names)  # every parameter is mapped
    missing, unexpected = llama.load_state_dict(
        {names[k]: v for k, v in ours.items()}, strict=False
    )
    assert not unexpected and not missing
    return llama


def llama_bidirectional_logits(llama, x, key_mask=None, position_ids=None):
    batch, length = x.shape
    keys = torch.ones(batch, length, dtype=torch.bool) if key_mask is None else key_mask.bool()
    mask4d = keys[:, None, None, :].expand(batch, 1, length, length)
    return llama(input_ids=x, attention_mask=mask4d, position_ids=position_ids).logits


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_logits_equal_a_bidirectional_llama_with_the_same_weights(n_kv_heads, attn_implementation):
    model = tiny_llada(n_kv_heads=n_kv_heads)
    model.set_attn_implementation(attn_implementation)
    llama = llama_reference(model)
    x = tokens(2, 11)
    with torch.no_grad():
        ours = model(x).logits
        theirs = llama_bidirectional_logits(llama, x)
    assert ours.shape == (2, 11, PADDED)  # logits over the padded embedding rows
    # fp32 round-off only (sdpa against sdpa is bit-exact; eager sums in another order)
    torch.testing.assert_close(ours, theirs, atol=1e-5 * theirs.abs().max().item(), rtol=1e-5)
    # and not a causal Llama: the reference's own (causal) forward differs
    with torch.no_grad():
        assert not torch.allclose(llama(input_ids=x).logits, ours, atol=1e-3)


def test_attention_is_bidirectional_and_logits_are_not_shifted():
    model = tiny_llada()
    x = tokens(1, 9)
    changed = x.clone()
    changed[0, -1] = (x[0, -1] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(x).logits, model(changed).logits
    assert not torch.allclose(before[0, 0], after[0, 0], atol=1e-4)  # position 0 sees the last
    assert model.config.logit_shift == 0
    lm = as_masked_diffusion_lm(model)
    assert (lm.mask_token_id, lm.logit_shift) == (MASK, 0)
    with torch.no_grad():  # the adapter's aligned logits are the raw ones, position for position
        torch.testing.assert_close(lm.logits(x), before)


def test_left_padded_row_equals_the_row_alone():
    model = tiny_llada()
    alone = tokens(1, 7, seed=1)
    padded = torch.cat([torch.full((1, 3), VOCAB - 2), alone], dim=1)
    batch = torch.cat([padded, tokens(1, 10, seed=2)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        ref = model(alone).logits
        got = model(batch, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        other = model(batch[1:]).logits
    atol = 1e-5 * ref.abs().max().item()  # fp32 round-off (a masked kernel sums differently)
    torch.testing.assert_close(got[0, 3:], ref[0], atol=atol, rtol=1e-5)
    torch.testing.assert_close(got[1], other[0], atol=atol, rtol=1e-5)
    assert torch.isfinite(got).all()  # padding rows stay finite


def test_save_pretrained_reloads_in_a_fresh_process_with_the_released_names(tmp_path):
    model = tiny_llada(n_layers=2)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    released = {"model.transformer.wte.weight", "model.transformer.ln_f.weight"}
    released |= {"model.transformer.ff_out.weight"}  # untied: the checkpoint has the head
    for i in range(2):
        released |= {
            f"model.transformer.blocks.{i}.{name}.weight"
            for name in (
                [
                    "attn_norm",
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "attn_out",
                    "ff_norm",
                    "ff_proj",
                    "up_proj",
                    "ff_out",
                ]
            )
        }
    assert saved == released
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert {"d_model", "n_heads", "n_kv_heads", "mlp_hidden_size", "weight_tying"} <= set(config)
    x = tokens(2, 6)
    script = (
        "import sys, torch\n"
        "import dlm_decode.models.llada\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "assert type(m).__name__ == 'LLaDAModelLM', type(m)\n"
        "x = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    torch.save(m(x).logits, sys.argv[3])\n"
    )
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "x.pt"),
         str(tmp_path / "logits.pt")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(x).logits)


def released_config(**fields) -> dict:
    """A config.json as GSAI-ML/LLaDA-8B-Instruct's (every key, remote-code `auto_map`), tiny."""
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 64,
        "embedding_dropout": 0.0,
        "embedding_size": PADDED,
        "eos_token_id": VOCAB - 2,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": MASK,
        "max_sequence_length": 128,
        "mlp_hidden_size": 96,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 2,
        "n_layers": 3,
        "pad_token_id": VOCAB - 2,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 10000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": VOCAB,
        "weight_tying": False,
        **fields,
    }


@pytest.mark.parametrize("auto_class", [AutoModelForCausalLM, AutoModel])
def test_released_folder_loads_natively_without_trust_remote_code(tmp_path, auto_class):
    # The folder has no modeling_llada.py: loading it must not need (or try) the remote code.
    model = tiny_llada()
    (tmp_path / "config.json").write_text(json.dumps(released_config()))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is LLaDAModelLM
    x = tokens(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_tied_head_is_the_embedding_and_is_saved_once(tmp_path):
    model = tiny_llada(weight_tying=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    x = tokens(1, 5)
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=x).last_hidden_state
        torch.testing.assert_close(model(x).logits, hidden @ model.get_input_embeddings().weight.T)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert "model.transformer.wte.weight" in saved
    assert "model.transformer.ff_out.weight" not in saved  # as the released tied layout
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_backbone_is_found_by_introspection_and_has_llamas_interface():
    model = tiny_llada()
    backbone = model.get_decoder()
    assert backbone.layers is backbone.transformer.blocks
    assert backbone.norm is backbone.transformer.ln_f
    assert backbone.embed_tokens is model.get_input_embeddings()
    found = find_decoder(model)
    assert found.num_layers == 3 and found.lm_head is model.get_output_embeddings()
    # a layer called as a Llama decoder layer reproduces the backbone's forward
    x = tokens(2, 6)
    positions = torch.arange(6).expand(2, -1)
    with torch.no_grad():
        hidden = backbone.embed_tokens(x)
        cos_sin = backbone.rotary_emb(hidden, positions)
        for layer in backbone.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions,
                           past_key_values=None, use_cache=False, position_embeddings=cos_sin)  # fmt: skip
        torch.testing.assert_close(backbone.norm(hidden), backbone(input_ids=x).last_hidden_state)


def native_lm(model: LLaDAModelLM) -> MaskedDiffusionLM:
    return MaskedDiffusionLM(model, mask_token_id=MASK, logit_shift=0, call_style="hf")


def test_cached_window_equals_full_logits_when_nothing_changed():
    lm = native_lm(tiny_llada(seed=1))
    x = tokens(3, 14)
    key_mask = torch.ones(3, 14, dtype=torch.long)
    key_mask[1, :3] = 0
    with torch.no_grad():
        full = lm.logits(x, key_mask)
        cache = BlockKVCache()
        torch.testing.assert_close(cached_logits(lm, x, key_mask, cache), full)
        assert cache.keys[0].shape == (3, 2, 14, 16)  # post-RoPE keys, (B, n_kv_heads, T, hd)
        rows = torch.tensor([0, 1])
        for window in [(6, 10), (6, 14)]:
            got = cached_logits(lm, x[rows], key_mask[rows], cache, window=window, rows=rows)
            torch.testing.assert_close(got, full[rows][:, window[0] : window[1]])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_model_decodes_the_same_with_and_without_cache(cache):
    # One layer: a position's cached K/V depend on its own token only, so Fast-dLLM's caches are
    # exact (prefix committed, suffix all [MASK]): cached decoding equals uncached token for token.
    lm = native_lm(tiny_llada(seed=3, n_layers=1))
    prompt = tokens(3, 4, seed=3)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1, :2] = 0

    def bounded(event):
        assert event.step <= 3 * 12, "no progress: the model keeps predicting [MASK]"

    kwargs = dict(gen_length=12, attention_mask=mask, callback=bounded)
    plain = generate(lm, prompt, FastDLLM(block_length=4, threshold=0.3), **kwargs)
    cached = generate(lm, prompt, FastDLLM(block_length=4, threshold=0.3, cache=cache), **kwargs)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.stats.nfe.tolist() == plain.stats.nfe.tolist()
    assert not (cached.generated == MASK).any()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_on_a_deep_model_match_uncached_decoding_when_each_block_is_one_pass(cache):
    # threshold 0: every block is decoded by its refresh pass (a full forward) alone
    lm = native_lm(tiny_llada(seed=0))
    prompt = tokens(2, 4)
    mask = torch.ones(2, 4, dtype=torch.long)
    mask[1, :2] = 0
    kwargs = dict(gen_length=12, attention_mask=mask)
    cached = generate(lm, prompt, FastDLLM(block_length=4, threshold=0.0, cache=cache), **kwargs)
    plain = generate(lm, prompt, FastDLLM(block_length=4, threshold=0.0), **kwargs)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.stats.nfe.tolist() == [3, 3]


def test_bf16_forward_is_close_to_fp32_with_left_padding():
    model = tiny_llada(std=0.1)
    x = tokens(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    kwargs = dict(attention_mask=mask, position_ids=position_ids_from_mask(mask))
    with torch.no_grad():
        ref = model(x, **kwargs).logits
        low = model.to(torch.bfloat16)(x, **kwargs).logits
        hidden = model.get_decoder().embed_tokens(x)
        cos, _ = model.get_decoder().rotary_emb(hidden, kwargs["position_ids"])
    assert low.dtype == torch.bfloat16 and hidden.dtype == torch.bfloat16
    assert cos.dtype == torch.float32  # rope_full_precision: q, k are rotated in fp32
    real = mask.bool()
    err = (low.float() - ref)[real].abs().max() / ref[real].abs().max()
    assert err < 0.05, f"bf16 logits are {err:.3f} of the logit range away from fp32"


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [("block_type", "sequential", "block_type='llama'"), ("rope", False, "rope=True"),
     ("activation_type", "swiglu", "'silu'"), ("layer_norm_type", "default", "'rms'")],
)  # fmt: skip
def test_unsupported_options_are_refused_with_the_fix(field, value, fix):
    with pytest.raises(ValueError, match=fix):
        LLaDAModelLM(tiny_config(**{field: value}))
