"""SFT examples vs the rule of the official `preprocess_function`, re-derived from the positions."""

from __future__ import annotations

import pytest

from meap import sft_examples

MASK, EOS, IGNORE = 999, 2, -100


def prompt_answer(p: int, a: int) -> tuple[list[int], list[int]]:
    return [10 + i % 7 for i in range(p)], [100 + i for i in range(a)]  # distinct answer tokens


def official_duplicate(prompt, answer, positions, max_length=None):
    """The official masked sample for the given sampled positions (its only random input)."""
    full = prompt + answer
    end = len(full) if max_length is None else min(len(full), max_length - 1)
    masked, labels = full[:end].copy(), [IGNORE] * end
    for pos in positions:
        masked[pos] = MASK
        labels[pos] = full[pos]
    return [*masked, EOS], [*labels, IGNORE]


@pytest.mark.parametrize("answer_len", [0, 1, 49, 50])
def test_short_answers_give_only_the_normal_example(answer_len):
    prompt, answer = prompt_answer(6, answer_len)
    out = sft_examples(prompt, answer, mask_token_id=MASK, eos_token_id=EOS)
    assert out == [{"input_ids": prompt + answer + [EOS], "labels": [IGNORE] * 6 + answer + [EOS]}]


@pytest.mark.parametrize(("answer_len", "ratio"), [(51, 0.1), (80, 0.1), (200, 0.25), (51, 0.01)])
def test_long_answers_add_the_masked_duplicate(answer_len, ratio):
    prompt, answer = prompt_answer(9, answer_len)
    normal, dup = sft_examples(prompt, answer, ratio, mask_token_id=MASK, eos_token_id=EOS)
    assert normal == {"input_ids": prompt + answer + [EOS], "labels": [IGNORE] * 9 + answer + [EOS]}
    positions = [i for i, t in enumerate(dup["input_ids"]) if t == MASK]
    assert len(positions) == max(1, int(answer_len * ratio))
    assert all(9 <= p < 9 + answer_len for p in positions)  # inside the answer span only
    expected_ids, expected_labels = official_duplicate(prompt, answer, positions)
    assert dup["input_ids"] == expected_ids and dup["labels"] == expected_labels


def test_min_answer_tokens_threshold_is_strict():
    prompt, answer = prompt_answer(3, 20)
    assert len(sft_examples(prompt, answer, min_answer_tokens=20, mask_token_id=MASK)) == 1
    assert len(sft_examples(prompt, answer, min_answer_tokens=19, mask_token_id=MASK)) == 2


def test_without_eos_nothing_is_appended():
    prompt, answer = prompt_answer(4, 60)
    normal, dup = sft_examples(prompt, answer, mask_token_id=MASK)
    assert normal["input_ids"] == prompt + answer
    assert len(dup["input_ids"]) == len(dup["labels"]) == 64


def test_truncation_follows_the_official_code():
    prompt, answer = prompt_answer(10, 100)
    normal, dup = sft_examples(prompt, answer, mask_token_id=MASK, eos_token_id=EOS, max_length=64)
    full = prompt + answer
    assert normal["input_ids"] == [*full[:63], EOS]  # input_sequence[:max_length-1] + [eos]
    assert normal["labels"] == ([IGNORE] * 10 + answer + [EOS])[:64]  # labels[:max_length]
    positions = [i for i, t in enumerate(dup["input_ids"]) if t == MASK]
    assert len(positions) == int((63 - 10) * 0.1)  # span [P, max_length - 1)
    assert (dup["input_ids"], dup["labels"]) == official_duplicate(prompt, answer, positions, 64)
    # a prompt longer than max_length leaves no answer to learn: both examples dropped
    assert sft_examples([1] * 80, answer, mask_token_id=MASK, eos_token_id=EOS, max_length=64) == []


def test_positions_are_deterministic_per_seed_and_differ_between_examples():
    prompt, answer = prompt_answer(5, 120)
    first = sft_examples(prompt, answer, mask_token_id=MASK, seed=0)[1]
    assert first == sft_examples(prompt, answer, mask_token_id=MASK, seed=0)[1]
    assert first != sft_examples(prompt, answer, mask_token_id=MASK, seed=1)[1]
    other = sft_examples([*prompt[:-1], 3], answer, mask_token_id=MASK, seed=0)[1]
    mask_at = [i for i, t in enumerate(first["input_ids"]) if t == MASK]
    assert mask_at != [i for i, t in enumerate(other["input_ids"]) if t == MASK]


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="add_mask_token"):
        sft_examples([1], [2], mask_token_id=None)
    with pytest.raises(ValueError, match="0.1"):
        sft_examples([1], [2], 1.0, mask_token_id=MASK)
