"""generate() refuses up front what would fail deep inside a sampler or decode nonsense: a [MASK]
id outside the vocabulary and a causal LM (unless allow_causal=True)."""

import pytest
import torch

from dlm_decode import LLaDA, MaskedDiffusionLM, generate
from layerwise_core import tiny_bidirectional, tiny_llama

PROMPT = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize("mask", [128, 500, -1])
def test_mask_id_outside_the_vocabulary(mask):
    # before: an IndexError from the embedding lookup, about 24 frames below generate()
    model = tiny_bidirectional()  # vocabulary 128
    with pytest.raises(ValueError) as info:
        generate(model, PROMPT, LLaDA(steps=2, block_length=2), gen_length=2, mask_token_id=mask)
    assert str(info.value) == (
        f"mask_token_id {mask} is outside the model's vocabulary [0, 128): pass the model's "
        "[MASK] id (config.mask_token_id; LLaDA uses 126336, Dream 151666)"
    )


def test_causal_lm_is_refused_unless_allowed():
    # before: decoded without complaint, each masked position predicted from its left only
    causal = tiny_llama()
    message = (
        "LlamaForCausalLM is a causal LM (each position attends only to the left), not a masked "
        "diffusion LM: decode a masked diffusion LM (LLaDA, Dream, a layerwise objective=mdm run, "
        "or a model whose config sets logit_shift), or pass allow_causal=True to decode it anyway"
    )
    with pytest.raises(ValueError) as info:
        generate(
            causal,
            PROMPT,
            LLaDA(steps=2, block_length=2),
            gen_length=2,
            mask_token_id=127,
            logit_shift=0,
        )
    assert str(info.value) == message
    by_hand = MaskedDiffusionLM(causal, mask_token_id=127, logit_shift=0)  # described by hand
    with pytest.raises(ValueError, match="is a causal LM"):
        generate(by_hand, PROMPT, LLaDA(steps=2, block_length=2), gen_length=2)
    out = generate(by_hand, PROMPT, LLaDA(steps=2, block_length=2), gen_length=2, allow_causal=True)
    assert out.sequences.shape == (1, 5) and not (out.generated == 127).any()


def test_a_causal_lm_shows_why_it_is_refused():
    # the property the check stands for: a causal LM's output at position 0 ignores position 1,
    # a masked diffusion LM's does not
    x, y = torch.tensor([[127, 3]]), torch.tensor([[127, 4]])
    with torch.no_grad():
        causal, bidirectional = tiny_llama(), tiny_bidirectional()
        assert torch.equal(causal(x).logits[:, 0], causal(y).logits[:, 0])
        assert not torch.equal(bidirectional(x).logits[:, 0], bidirectional(y).logits[:, 0])


def test_masked_diffusion_models_pass():
    model = tiny_bidirectional()  # a LlamaForCausalLM subclass, but its config sets logit_shift
    out = generate(model, PROMPT, LLaDA(steps=2, block_length=2), gen_length=2)
    assert out.sequences.shape == (1, 5) and not (out.generated == 127).any()
