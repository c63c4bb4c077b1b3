"""One vocabulary (docs/architecture.md, "Names"): `mask_ratio` and `input_ids` (a tensor or a
batch mapping); old names keep working for one release, with a FutureWarning, and give the same
result."""

from __future__ import annotations

import warnings

import pytest
import torch

from layerwise_core import tiny_llama
from meap import (
    MEAPCollator,
    attention_entropy,
    mask_inputs,
    masked_positions,
    reference_mask_positions,
)

MASK = 999


def ids_and_mask():
    ids = torch.randint(0, 500, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, :5] = 0
    return ids, mask


def test_ratio_is_a_deprecated_alias_of_mask_ratio():
    ids, mask = ids_and_mask()
    with pytest.warns(FutureWarning, match="`ratio` is deprecated.*use `mask_ratio`"):
        old = mask_inputs(ids, ratio=0.2, mask_token_id=MASK, step=4, attention_mask=mask)
    new = mask_inputs(ids, mask_ratio=0.2, mask_token_id=MASK, step=4, attention_mask=mask)
    assert torch.equal(old, new) and (new == MASK).any()
    with pytest.warns(FutureWarning, match="masked_positions: the argument `ratio`"):
        old = masked_positions(ids, ratio=0.3, step=2, mode="per_sequence")
    assert torch.equal(old, masked_positions(ids, mask_ratio=0.3, step=2, mode="per_sequence"))
    with pytest.warns(FutureWarning, match="reference_mask_positions: the argument `ratio`"):
        old = reference_mask_positions(64, ratio=0.15, step=7)
    assert old == reference_mask_positions(64, mask_ratio=0.15, step=7)


def test_collator_ratio_alias_gives_the_same_batches():
    rows = [{"input_ids": list(range(3, 3 + n))} for n in (20, 13, 17)]
    with pytest.warns(FutureWarning, match="MEAPCollator: the argument `ratio`"):
        old = MEAPCollator(MASK, ratio=0.25, mode="per_sequence", pad_token_id=0)
    new = MEAPCollator(MASK, mask_ratio=0.25, mode="per_sequence", pad_token_id=0)
    for _ in range(3):
        a, b = old(rows), new(rows)
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels"))
    with pytest.warns(FutureWarning, match="the attribute `ratio`"):
        assert old.ratio == new.mask_ratio == 0.25


@pytest.mark.parametrize("mode", ["reference", "per_sequence"])
def test_a_batch_dict_and_a_tensor_give_the_same_masks(mode):
    ids, mask = ids_and_mask()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the canonical names never warn
        a = mask_inputs(ids, 0.2, MASK, 3, mode, attention_mask=mask)
        b = mask_inputs(batch, 0.2, MASK, 3, mode)
        assert torch.equal(a, b)
        assert torch.equal(
            masked_positions(ids, 0.2, 3, mode, attention_mask=mask),
            masked_positions(batch, 0.2, 3, mode),
        )
    # the mask inside the batch is used: padding is never masked
    assert not (b[mask == 0] == MASK).any()
    with pytest.raises(ValueError, match="already holds an 'attention_mask'"):
        mask_inputs(batch, 0.2, MASK, 3, mode, attention_mask=mask)


def test_attention_entropy_input_ids_tensor_dict_and_old_batch_keyword():
    model = tiny_llama(seed=1)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1] * 9, [0] * 3 + [1] * 6])
    tensor_form = attention_entropy(model, ids, attention_mask=mask)
    dict_form = attention_entropy(model, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(tensor_form, dict_form, rtol=0, atol=0)
    with pytest.warns(FutureWarning, match="`batch` is deprecated.*use `input_ids`"):
        old = attention_entropy(model, batch={"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(old, dict_form, rtol=0, atol=0)
    # the mask matters (so the equalities above compare masked results)
    assert not torch.allclose(attention_entropy(model, ids), tensor_form)
