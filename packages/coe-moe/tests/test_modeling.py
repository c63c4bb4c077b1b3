"""CoEConfig / CoEModel / CoEForCausalLM: config validation, Auto classes, the decoder block's
residual wiring, C=1 vs transformers' Qwen2-MoE, the auxiliary loss, save/load and generation."""

import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from coe_moe import CoEConfig, CoEForCausalLM, CoELayer, CoEModel, load_balancing_loss
from layerwise_core import find_decoder, set_seed
from layerwise_core.hf_cache import cache_keyword

VOCAB = 64


def _config(**overrides):
    fields = dict(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, moe_intermediate_size=8, num_experts=6, top_k=2,
        num_iterations=2, max_position_embeddings=64,
    )  # fmt: skip
    return CoEConfig(**{**fields, **overrides})


def _model(dtype=torch.float64, seed=0, **overrides):
    set_seed(seed)
    return CoEForCausalLM(_config(**overrides)).to(dtype).eval()


def _ids(batch=2, seq=9, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"top_k": 7}, r"top_k must be between 1 and num_experts \(6\), got 7: lower top_k"),
        ({"num_iterations": 0}, r"num_iterations \(C\) must be >= 1, got 0"),
        ({"num_shared_experts": -1}, "num_shared_experts must be >= 0"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ({"hidden_size": 18}, "not a multiple of num_attention_heads 4"),
        ({"expert_backend": "cuda"}, "expert_backend must be one of"),
        ({"aux_loss_coef": -1.0}, "aux_loss_coef must be >= 0"),
    ],
)
def test_invalid_configs_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_defaults_are_the_papers_iso_compute_coe():
    c = CoEConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (1024, 4, 8)
    assert (c.num_experts, c.num_shared_experts, c.moe_intermediate_size) == (63, 1, 704)
    assert (c.top_k, c.num_iterations, c.aux_loss_coef) == (4, 2, 0.001)
    assert c.inner_residual and not c.outer_residual and c.independent_routers


def test_auto_classes_and_decoder_map(tmp_path):
    config = _config()
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, CoEConfig)
    unnamed = {"_name_or_path": ""}
    assert again.to_diff_dict() | unnamed == config.to_diff_dict() | unnamed
    assert isinstance(AutoModelForCausalLM.from_config(config), CoEForCausalLM)
    assert isinstance(AutoModel.from_config(config), CoEModel)
    dmap = find_decoder(_model())
    assert dmap.num_layers == 2 and isinstance(dmap[0].mlp, CoELayer) and dmap[0].is_moe


def test_expert_top_k_is_not_a_sampling_top_k():
    model = _model(top_k=3)
    assert model.generation_config.top_k is None


@pytest.mark.parametrize("outer_residual", [False, True])
def test_decoder_block_wiring(outer_residual):
    """out = CoE(RMSNorm_post(h)) (+ h), h = x + Attn(RMSNorm_in(x)), from the block's parts."""
    model = _model(outer_residual=outer_residual)
    block = model.model.layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    pos = torch.arange(5)[None]
    cos_sin = model.model.rotary_emb(x, pos)
    attn, _ = block.self_attn(
        block.input_layernorm(x), position_embeddings=cos_sin, attention_mask=None
    )
    h = x + attn
    want = block.mlp(block.post_attention_layernorm(h)) + (h if outer_residual else 0)
    got = block(x, position_embeddings=cos_sin, position_ids=pos, attention_mask=None)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_one_iteration_with_outer_residual_is_qwen2_moe():
    """C = 1, outer residual, no inner residual, no shared expert: a standard MoE transformer.

    transformers' Qwen2-MoE with the same weights (its shared expert zeroed) must give the same
    logits. Qwen2-MoE takes the router softmax in fp32 even in fp64: fp32-level tolerance.
    """
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    ours = _model(num_iterations=1, inner_residual=False, outer_residual=True, num_shared_experts=0)
    qwen_config = Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=8, num_experts=6,
        num_experts_per_tok=2, shared_expert_intermediate_size=8, norm_topk_prob=False,
        qkv_bias=False, max_position_embeddings=64, tie_word_embeddings=False,
        experts_implementation="eager",  # its grouped_mm path has no fp64
    )  # fmt: skip
    qwen = Qwen2MoeForCausalLM(qwen_config).to(torch.float64).eval()
    state = {k.replace("mlp.routers.0.", "mlp.gate."): v for k, v in ours.state_dict().items()}
    for key, value in qwen.state_dict().items():
        if "shared_expert" in key:
            state[key] = torch.zeros_like(value)
    qwen.load_state_dict(state, strict=True)
    ids = _ids()
    torch.testing.assert_close(ours(ids).logits, qwen(ids).logits, rtol=1e-6, atol=1e-6)


def test_aux_loss_is_added_in_training_only():
    model = _model(aux_loss_coef=0.01)
    ids = _ids()
    model.train()
    out = model(ids, labels=ids)
    assert len(out.router_logits) == 2 * 2  # layers x iterations
    want_aux = 0.01 * sum(load_balancing_loss(t, 2, batch_size=2) for t in out.router_logits)
    torch.testing.assert_close(out.aux_loss, want_aux)
    # transformers' LM loss runs in fp32 whatever the model dtype
    lm_only = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1)
    )
    close = {"rtol": 1e-6, "atol": 1e-6, "check_dtype": False}
    torch.testing.assert_close(out.loss, lm_only.double() + want_aux, **close)
    model.eval()
    evaluated = model(ids, labels=ids)
    assert evaluated.aux_loss is None and evaluated.router_logits is None
    torch.testing.assert_close(evaluated.loss, lm_only, **close)
    # asked for explicitly in eval mode: reported, but the loss stays the LM loss
    asked = model(ids, labels=ids, output_router_logits=True)
    torch.testing.assert_close(asked.aux_loss, want_aux)
    torch.testing.assert_close(asked.loss, lm_only, **close)


def test_every_parameter_gets_a_gradient():
    model = _model(dtype=torch.float32, num_iterations=2, top_k=3)
    model.train()
    model(_ids(batch=4, seq=16), labels=_ids(batch=4, seq=16)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_save_load_round_trip(tmp_path):
    model = _model(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(again, CoEForCausalLM)
    ids = _ids()
    assert torch.equal(again(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)


def _greedy_by_hand(model, prompt, steps):
    """Greedy decoding without any cache: the argmax of a full forward, one token at a time."""
    ids = prompt
    for _ in range(steps):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("padded", [False, True])
def test_cached_generate_equals_uncached_token_for_token(padded):
    # transformers 5.25 hands generate()'s cache over as `cache=`: a model that reads only
    # `past_key_values` builds a second, empty cache beside it and masks against that one.
    model = _model()
    prompt = _ids(batch=2, seq=5)
    mask = torch.ones_like(prompt)
    if padded:
        mask[1, :2] = 0  # left padding: the mask and the positions must follow the cache
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated cache keyword on the way
        cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, uncached)
    if not padded:
        assert torch.equal(cached, _greedy_by_hand(model, prompt, 8))


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_incremental_decoding_equals_full_forward_fp64(name):
    # either name of the cache argument (5.25's `cache`, the older `past_key_values`) works
    model = _model()
    ids = _ids(batch=2, seq=10)
    full = model(ids).logits
    cache = DynamicCache()
    out = model(ids[:, :6], use_cache=True, **{name: cache})
    assert out[cache_keyword(type(out))] is cache and cache.get_seq_length() == 6
    steps = [out.logits]
    for t in range(6, 10):
        steps.append(model(ids[:, t : t + 1], use_cache=True, **{name: cache}).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="give it once"):
        model(ids[:, :1], cache=cache, past_key_values=DynamicCache())


def test_output_hidden_states():
    model = _model()
    out = model(_ids(), output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(_ids()))
    logits = model.lm_head(out.hidden_states[-1])
    torch.testing.assert_close(logits, out.logits)


def test_shared_router_ablation_has_one_router():
    model = _model(independent_routers=False)
    keys = [k for k in model.state_dict() if "routers" in k]
    assert keys == ["model.layers.0.mlp.routers.0.weight", "model.layers.1.mlp.routers.0.weight"]


@pytest.mark.parametrize("independent_routers", [True, False])
def test_router_logits_are_every_router_call_layer_major(independent_routers):
    """The model records C logits per layer (also when one router serves every iteration):
    those the CoE layer itself returns for the input it received, layer by layer."""
    model = _model(num_iterations=3, independent_routers=independent_routers)
    inputs = []
    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    ids = _ids()
    out = model(ids, output_router_logits=True)
    assert len(out.router_logits) == 2 * 3
    for i, layer in enumerate(model.model.layers):
        _, own = layer.mlp(inputs[i], output_router_logits=True)
        for t in range(3):
            assert torch.equal(out.router_logits[3 * i + t], own[t]), (i, t)
    # and the CoEModel records them too; not asked for, none
    assert len(model.model(ids, output_router_logits=True).router_logits) == 6
    assert model(ids).router_logits is None


def test_attention_maps_of_the_eager_backend():
    eager = _model()
    eager.set_attn_implementation("eager")
    ids = _ids(seq=7)
    out = eager(ids, output_attentions=True)
    assert len(out.attentions) == 2
    for probs in out.attentions:
        assert probs.shape == (2, 4, 7, 7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64))
        assert not probs.triu(diagonal=1).any()  # causal
    # the same model on torch's SDPA: the same logits (eager attention takes its softmax in fp32)
    torch.testing.assert_close(out.logits, _model()(ids).logits, rtol=1e-6, atol=1e-6)


def test_positional_arguments_as_in_mixtral():
    model = _model()
    ids = _ids(seq=6)
    cache = DynamicCache()
    # MixtralModel's order: input_ids, attention_mask, position_ids, the KV cache
    out = model.model(ids[:, :4], None, None, cache, use_cache=True)
    assert cache.get_seq_length() == 4
    step = model.model(ids[:, 4:], None, None, cache, use_cache=True).last_hidden_state
    full = model.model(ids).last_hidden_state
    torch.testing.assert_close(step, full[:, 4:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.last_hidden_state, full[:, :4], rtol=1e-10, atol=1e-10)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model(dtype=torch.float32).train()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # newer transformers renamed gradient_checkpointing_enable (kept, deprecated, until v6)
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=1e-6, atol=1e-7, msg=name)
