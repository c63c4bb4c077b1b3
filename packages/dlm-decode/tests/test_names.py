"""One vocabulary (docs/architecture.md, "Names"): `input_ids` as a tensor or a batch mapping,
`mask_token_id`; the old names (`prompt_ids`, `mask_id`) warn and give the same result."""

import warnings

import pytest
import torch

from dlm_decode import LLaDA, generate, unconditional_input
from layerwise_core import tiny_bidirectional


def prompts():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (2, 6), generator=g)
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])  # the second prompt is left-padded
    ids[1, :3] = torch.tensor([50, 77, 3])  # padding that changes the decode unless masked
    return ids, mask


def test_batch_dict_tensor_and_deprecated_prompt_ids_decode_the_same():
    model = tiny_bidirectional(seed=1, initializer_range=0.3)  # peaked, input-dependent logits
    ids, mask = prompts()
    strategy = LLaDA(steps=4, block_length=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = generate(model, ids, strategy, gen_length=4, attention_mask=mask)
        b = generate(model, {"input_ids": ids, "attention_mask": mask}, strategy, gen_length=4)
        c = generate(model, input_ids=ids, strategy=strategy, gen_length=4, attention_mask=mask)
    with pytest.warns(FutureWarning, match="generate: the argument `prompt_ids`.*`input_ids`"):
        d = generate(model, prompt_ids=ids, strategy=strategy, gen_length=4, attention_mask=mask)
    for other in (b, c, d):
        assert torch.equal(a.sequences, other.sequences)
    # the mask took effect: the padded row decodes as its prompt alone does, and not so unmasked
    alone = generate(model, ids[1:, 3:], strategy, gen_length=4).sequences[0, 3:]
    assert torch.equal(b.sequences[1, 6:], alone)
    assert not torch.equal(generate(model, ids, strategy, gen_length=4).sequences[1, 6:], alone)


def test_unconditional_input_mask_id_alias():
    x = torch.tensor([[5, 6, 7, 8]])
    prompt = torch.tensor([[True, True, False, False]])
    expected = torch.tensor([[9, 9, 7, 8]])
    assert torch.equal(unconditional_input(x, prompt, mask_token_id=9), expected)
    with pytest.warns(FutureWarning, match="`mask_id` is deprecated.*`mask_token_id`"):
        assert torch.equal(unconditional_input(x, prompt, mask_id=9), expected)
