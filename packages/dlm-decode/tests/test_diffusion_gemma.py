"""transformers' DiffusionGemma as a dlm_decode family: the adapter against the model's own canvas
forward, one denoising step per canvas against its own generation mixin, exact caches, Prophet."""

import pytest
import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaModel
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf_generation

from dlm_decode import LLaDA, Prophet, as_masked_diffusion_lm, generate, load_masked_diffusion_lm
from dlm_decode.diffusion_gemma import noise_tokens
from dlm_decode.early_commit import StagedThresholds
from dlm_decode.strategies import FastDLLM

VOCAB, CANVAS = 64, 4


def tiny(attn: str = "sdpa", seed: int = 0, window: int = 8) -> DiffusionGemmaForBlockDiffusion:
    """2 layers (one sliding, one full), MoE as released, sliding window 8 so that contexts of
    more than 8 tokens exercise it; large init so that logits are far from uniform."""
    config = DiffusionGemmaConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "global_head_dim": 16,
            "num_global_key_value_heads": 1,
            "sliding_window": window,
            "num_experts": 4,
            "top_k_experts": 2,
            "moe_intermediate_size": 16,
            "max_position_embeddings": 128,
            "layer_types": ["sliding_attention", "full_attention"],
            "initializer_range": 0.2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 8,
        },
        canvas_length=CANVAS,
        initializer_range=0.2,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(config).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_described_without_arguments(model):
    lm = as_masked_diffusion_lm(model)
    # no [MASK] in a uniform-noise model: a sentinel the head can never predict
    assert (lm.mask_token_id, lm.logit_shift, lm.call_style) == (VOCAB, 0, "diffusion_gemma")
    assert lm.eos_token_id == model.config.text_config.eos_token_id == 1
    # Fast-dLLM's caches run through dlm_decode.diffusion_gemma; not a Llama-style backbone
    assert lm.block_size == CANVAS and not lm.supports_kv_cache
    headless = DiffusionGemmaModel(model.config)
    with pytest.raises(ValueError, match="DiffusionGemmaForBlockDiffusion"):
        as_masked_diffusion_lm(headless)
    with pytest.raises(ValueError, match="multiple of the model's block"):
        generate(model, torch.tensor([[5, 6, 7]]), LLaDA(steps=6, block_length=6), gen_length=6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_are_the_models_own_canvas_forward(attn):
    """One block-causal pass over all canvases == the model's forward canvas by canvas (context
    through the encoder's cache, canvas through the decoder), past the sliding window too."""
    model = tiny(attn)
    lm = as_masked_diffusion_lm(model)
    prompt_length, length = 6, 6 + 3 * CANVAS
    x = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    x[:, prompt_length + 5 :] = lm.mask_token_id
    fed = torch.where(x == lm.mask_token_id, noise_tokens(lm, length, "cpu"), x)
    with torch.no_grad():
        got = lm.logits(x)
        for start in range(prompt_length, length, CANVAS):
            want = model(input_ids=fed[:, :start], decoder_input_ids=fed[:, start : start + CANVAS])
            torch.testing.assert_close(got[:, start : start + CANVAS], want.logits)


def test_left_padding_gives_the_unpadded_logits(model):
    """A left-padded row sees what it sees alone (positions count real tokens; RoPE is relative)."""
    lm = as_masked_diffusion_lm(model)
    alone = torch.tensor([[9, 3, 7, 11, 5, 2, 8, 4, 13, 14, 15, 16]])
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), alone], 1)
    key_mask = torch.tensor([[0] * 4 + [1] * 12])
    with torch.no_grad():
        want, got = lm.logits(alone), lm.logits(padded, key_mask)
    # the canvases of both are end-aligned: the last two hold the same tokens and context
    torch.testing.assert_close(got[:, -2 * CANVAS :], want[:, -2 * CANVAS :], rtol=1e-5, atol=1e-5)


def _released_one_step(model, lm, prompt, gen_length, attention_mask=None):
    """The model's own `generate` with one denoising step per canvas, its random initial canvases
    replaced by our noise stand-ins for the same positions."""
    length = prompt.shape[1] + gen_length
    noise = noise_tokens(lm, length, "cpu")
    canvases = []
    for start in range(prompt.shape[1], length, CANVAS):
        canvases += [noise[start : start + CANVAS], noise[:CANVAS]]  # (init, the re-noise draw)
    original = hf_generation.EntropyBoundSampler.initialize_canvas

    def initialize_canvas(self, batch_size, device):
        return canvases.pop(0)[None].expand(batch_size, -1).clone()

    hf_generation.EntropyBoundSampler.initialize_canvas = initialize_canvas
    try:
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        out = model.generate(prompt, max_new_tokens=gen_length, max_denoising_steps=1, **kwargs)
    finally:
        hf_generation.EntropyBoundSampler.initialize_canvas = original
    assert not canvases  # every canvas drew its initial noise from us
    return out.sequences[:, prompt.shape[1] :]


def test_one_step_per_canvas_equals_the_released_generate(model):
    """Where the algorithms coincide (one denoising step per canvas: the released sampler keeps the
    argmax of its first step, LLaDA with one step per block commits every argmax) the tokens are
    identical, over three canvases, each encoded as the next one's context."""
    lm = as_masked_diffusion_lm(model)
    prompt = torch.tensor([[5, 9, 17, 3, 22, 40], [7, 7, 31, 2, 60, 11]])
    gen_length = 3 * CANVAS
    released = _released_one_step(model, lm, prompt, gen_length)
    ours = generate(model, prompt, LLaDA(steps=3, block_length=CANVAS), gen_length=gen_length)
    assert torch.equal(ours.generated, released)
    assert ours.stats.nfe.tolist() == [3, 3]
    assert len(set(released.flatten().tolist())) > 3  # not a degenerate constant output


def test_one_step_per_canvas_equals_the_released_generate_with_left_padding(model):
    lm = as_masked_diffusion_lm(model)
    prompt = torch.tensor([[5, 9, 17, 3, 22, 40], [0, 0, 0, 31, 2, 60]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    released = _released_one_step(model, lm, prompt, 2 * CANVAS, attention_mask=mask)
    ours = generate(
        model, prompt, LLaDA(steps=2, block_length=CANVAS), gen_length=8, attention_mask=mask
    )
    assert torch.equal(ours.generated, released)


@pytest.mark.parametrize("threshold", [0.3, None])  # threshold rule; fixed schedule (steps)
def test_prefix_and_dual_caches_are_exact(model, threshold):
    """Block-causal attention: the context of a canvas is causal and frozen within the block and
    no canvas attends to a later one, so both Fast-dLLM caches give the uncached tokens and NFE."""
    prompt = torch.tensor([[5, 9, 17, 3, 22, 40], [0, 0, 0, 31, 2, 60]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    steps = None if threshold is not None else 4
    runs = {
        cache: generate(
            model,
            prompt,
            FastDLLM(block_length=CANVAS, threshold=threshold, steps=steps, cache=cache),
            gen_length=2 * CANVAS,
            attention_mask=mask,
        )
        for cache in (None, "prefix", "dual")
    }
    for cache in ("prefix", "dual"):
        assert torch.equal(runs[cache].generated, runs[None].generated), cache
        assert torch.equal(runs[cache].stats.nfe, runs[None].stats.nfe), cache


def test_cached_window_logits_equal_uncached(model):
    from dlm_decode.kv_cache import BlockKVCache, cached_logits

    lm = as_masked_diffusion_lm(model)
    m = lm.mask_token_id
    x = torch.tensor([[5, 9, 17, 3, 22, 40, 8, 4, 30, 1, m, m, 12, m, m, m, m, m]])
    store = BlockKVCache()
    with torch.no_grad():
        full = cached_logits(lm, x, None, store)
        torch.testing.assert_close(full, lm.logits(x))
        x[0, 11] = 7  # a commit inside the current canvas [10, 14)
        want = lm.logits(x)
        for window in [(10, 14), (10, 18)]:
            got = cached_logits(lm, x, None, store, window=window)
            torch.testing.assert_close(got, want[:, window[0] : window[1]])


def test_prophet_early_commit_fills_every_mask_with_the_first_argmax(model):
    """Prophet on DiffusionGemma: thresholds of 0 exit at the first step and fill every mask, all
    canvases, with that step's argmax (canvases after the first see noise in their context)."""
    lm = as_masked_diffusion_lm(model)
    prompt = torch.tensor([[5, 9, 17, 3, 22, 40]])
    x = torch.cat([prompt, torch.full((1, 3 * CANVAS), lm.mask_token_id)], 1)
    with torch.no_grad():
        want = lm.logits(x)[:, 6:].argmax(-1)
    out = generate(
        model,
        prompt,
        Prophet(
            steps=12,
            block_length=CANVAS,
            region="block",
            thresholds=StagedThresholds(early=0.0, mid=0.0, late=0.0),
        ),
        gen_length=3 * CANVAS,
    )
    assert out.exit_step.tolist() == [1] and out.stats.nfe.tolist() == [1]
    assert torch.equal(out.generated, want)


def test_loads_with_its_head(tmp_path, model):
    """AutoModel alone would give the head-less DiffusionGemmaModel."""
    model.save_pretrained(tmp_path)
    lm = load_masked_diffusion_lm(str(tmp_path))
    assert type(lm.model) is DiffusionGemmaForBlockDiffusion and lm.block_size == CANVAS
    x = torch.tensor([[5, 9, 17, 3, 22, 40, VOCAB, VOCAB, VOCAB, VOCAB]])
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(x), as_masked_diffusion_lm(model).logits(x))
