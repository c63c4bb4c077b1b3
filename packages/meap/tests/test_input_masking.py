"""Pre-training masks vs the official formula, re-derived here with Python's global `random`."""

from __future__ import annotations

import random

import pytest
import torch

from meap import mask_inputs, masked_positions, reference_mask_positions

MASK = 999


def official_positions(block_size: int, ratio: float, step: int) -> list[int]:
    """scitix/MEAP meap_*.py train(), verbatim in substance, on the global RNG."""
    state = random.getstate()
    try:
        random.seed(50 + step % 51)
        num_masks = max(1, int(block_size * ratio))
        return random.sample(range(0, block_size - 1), num_masks)
    finally:
        random.setstate(state)


@pytest.mark.parametrize(
    ("block_size", "ratio"), [(4096, 0.15), (2048, 0.1), (256, 0.05), (37, 0.2)]
)
def test_reference_positions_equal_official_formula_for_many_steps(block_size, ratio):
    for step in range(0, 400, 3):
        assert reference_mask_positions(block_size, ratio, step) == official_positions(
            block_size, ratio, step
        )


def test_reference_mask_masks_the_same_columns_in_every_row():
    ids = torch.randint(0, 500, (5, 128), generator=torch.Generator().manual_seed(0))
    for step in range(60):
        out = mask_inputs(ids, 0.15, MASK, step)
        expected = ids.clone()
        expected[:, official_positions(128, 0.15, step)] = MASK  # the official indexing
        assert torch.equal(out, expected)


def test_reference_masks_cycle_every_51_steps():
    masks = [tuple(sorted(reference_mask_positions(256, 0.15, s))) for s in range(51)]
    assert len(set(masks)) == 51
    for step in (0, 7, 50):
        assert reference_mask_positions(256, 0.15, step + 51) == reference_mask_positions(
            256, 0.15, step
        )
        assert len(masks[step]) == int(256 * 0.15)


def test_reference_leaves_the_global_rng_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    reference_mask_positions(512, 0.15, 9)
    assert random.random() == expected


@pytest.mark.parametrize("mode", ["reference", "per_sequence"])
def test_last_position_never_masked(mode):
    ids = torch.zeros(16, 20, dtype=torch.long)
    for step in range(200):
        mask = masked_positions(ids, 0.5, step, mode)
        assert not mask[:, -1].any()
        assert mask[:, :-1].any()


@pytest.mark.parametrize("mode", ["reference", "per_sequence"])
def test_only_inputs_change_and_the_argument_is_not_modified(mode):
    ids = torch.randint(0, 500, (4, 64), generator=torch.Generator().manual_seed(1))
    clean = ids.clone()
    out = mask_inputs(ids, 0.15, MASK, step=5, mode=mode)
    assert torch.equal(ids, clean)  # labels built from `ids` stay clean
    mask = out == MASK
    assert torch.equal(out[~mask], clean[~mask])
    assert torch.equal(mask, masked_positions(ids, 0.15, 5, mode))


def test_per_sequence_statistics():
    batch, length, ratio = 64, 128, 0.15
    ids = torch.zeros(batch, length, dtype=torch.long)
    count = int(length * ratio)
    hits = torch.zeros(length, dtype=torch.float64)
    steps = 50
    for step in range(steps):
        mask = masked_positions(ids, ratio, step, "per_sequence")
        assert (mask.sum(dim=1) == count).all()  # exact count per row, as the reference
        distinct_rows = {tuple(row.nonzero().flatten().tolist()) for row in mask}
        assert len(distinct_rows) == batch
        hits += mask.sum(dim=0)
    freq = hits / (steps * batch)
    p = count / (length - 1)  # uniform over the length - 1 eligible positions
    sigma = (p * (1 - p) / (steps * batch)) ** 0.5
    assert freq[-1] == 0
    assert (freq[:-1] - p).abs().max() < 5 * sigma
    masked_fraction = hits.sum().item() / (steps * batch * length)
    assert abs(masked_fraction - ratio) < 1 / length  # floor(T r) / T


def test_per_sequence_is_a_function_of_seed_and_step():
    ids = torch.zeros(8, 50, dtype=torch.long)
    a = masked_positions(ids, 0.2, 3, "per_sequence", seed=7)
    torch.manual_seed(12345)  # hidden global state must not matter
    assert torch.equal(a, masked_positions(ids, 0.2, 3, "per_sequence", seed=7))
    assert not torch.equal(a, masked_positions(ids, 0.2, 4, "per_sequence", seed=7))
    assert not torch.equal(a, masked_positions(ids, 0.2, 3, "per_sequence", seed=8))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        masked_positions(ids, 0.2, 3, "per_sequence", g1),
        masked_positions(ids, 0.2, 99, "per_sequence", g2),
    )


def test_per_sequence_with_padding():
    lengths = [50, 31, 7, 2, 1]
    attention = torch.zeros(len(lengths), 50, dtype=torch.long)
    for b, n in enumerate(lengths):
        attention[b, :n] = 1
    ids = torch.zeros_like(attention)
    for step in range(40):
        mask = masked_positions(ids, 0.15, step, "per_sequence", attention_mask=attention)
        for b, n in enumerate(lengths):
            assert not mask[b, n - 1 :].any()  # padding and the last real token
            expected = min(max(1, int(n * 0.15)), max(n - 1, 0))
            assert mask[b].sum() == expected


def test_per_sequence_left_padding():
    attention = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    for step in range(30):
        mask = masked_positions(
            torch.zeros_like(attention), 0.3, step, "per_sequence", attention_mask=attention
        )
        assert not mask[0, :3].any() and not mask[:, -1].any()
        assert mask[0].sum() == 1 and mask[1].sum() == 2


def test_reference_mode_never_masks_padding():
    attention = torch.ones(3, 40, dtype=torch.long)
    attention[1, 20:] = 0
    attention[2, :10] = 0
    for step in range(51):
        mask = masked_positions(torch.zeros_like(attention), 0.2, step, attention_mask=attention)
        columns = torch.zeros(40, dtype=torch.bool)
        columns[official_positions(40, 0.2, step)] = True
        assert torch.equal(mask[0], columns)
        last_real = torch.arange(40) == 19
        assert torch.equal(mask[1], columns & attention[1].bool() & ~last_real)
        assert torch.equal(mask[2], columns & attention[2].bool())


def test_errors_name_the_fix():
    ids = torch.zeros(2, 10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        mask_inputs(ids, 1.5, MASK, 0)
    with pytest.raises(ValueError, match="per_sequence"):
        mask_inputs(ids, 0.1, MASK, 0, "reference", torch.Generator())
    with pytest.raises(ValueError, match="unsqueeze"):
        mask_inputs(ids[0], 0.1, MASK, 0)
    with pytest.raises(ValueError, match="add_mask_token"):
        mask_inputs(ids, 0.1, -1, 0)
    with pytest.raises(ValueError, match="smaller mask_ratio"):
        reference_mask_positions(1, 0.5, 0)
    with pytest.raises(ValueError, match="unknown MEAP mask mode"):
        mask_inputs(ids, 0.1, MASK, 0, "random")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_non_integer_ids_are_refused(dtype):
    # before: float ids came back as a float tensor with the [MASK] id written in, and the
    # model's embedding lookup failed later, far from the mistake
    ids = torch.full((2, 10), 3.7).to(dtype)
    with pytest.raises(ValueError) as info:
        mask_inputs(ids, 0.1, MASK, 0)
    assert str(info.value) == (
        f"mask_inputs: input_ids must hold integer token ids, got dtype {dtype}; pass the "
        "tokenizer's ids (torch.long), e.g. input_ids.long() if they are whole numbers"
    )


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_every_integer_dtype_is_accepted_and_kept(dtype):
    ids = torch.arange(20).view(2, 10).to(dtype)
    masked = mask_inputs(ids, 0.3, MASK, 0)
    assert masked.dtype == dtype
    reference = mask_inputs(ids.long(), 0.3, MASK, 0)
    assert torch.equal(masked.long(), reference)
