"""Answer extraction and the exact-match reward (small-reasoning-LMs spec section 6 T6): the
spec's hand cases, and a call with TRL's keyword contract (B prompts x G completions, extra
dataset columns, trainer_state / log_extra / log_metric)."""

from __future__ import annotations

import pytest

from layerwise.finetune.rewards import exact_match_reward, extract_answer, format_bonus


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 40 + 2 = 42\n#### 42", 42),
        ("The answer is 1,234.", 1234),
        ("#### 7\n#### 8", 8),  # the last marker wins
        ("3.0", 3),
        ("It costs $1,234.00 in all", 1234),
        ("half of 7 is 3.5", 3.5),
        ("#### 12 apples, not 13", 12),  # the number right after the marker, not the last one
        ("I got 5, so the answer is -3", -3),
        ("no digits", None),
        ("I think 4 ####", None),  # a marker with no number after it
    ],
)
def test_extract_answer_hand_cases(text, expected):
    got = extract_answer(text)
    assert got == expected
    if isinstance(expected, int):
        assert isinstance(got, int)  # "3.0" -> 3, not 3.0


def test_reward_with_trl_keyword_contract():
    # B = 2 prompts, G = 3 completions each; TRL repeats every dataset column G times and calls
    # reward_func(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=...)
    prompts = ["P1"] * 3 + ["P2"] * 3
    completions = [
        "5 + 3 = 8\n#### 8",  # right
        "#### 9",  # wrong
        "The answer is 8.",  # right, no marker (last number)
        "no digits",  # no number: 0
        "12 * 3 = 36\n#### 36",  # right
        "#### 36.0",  # right after normalisation
    ]
    gold = ["5 + 3 = 8\n#### 8"] * 3 + ["12 * 3 = 36\n#### 36"] * 3
    logged = []
    rewards = exact_match_reward(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2]] * 6,
        answer=gold,
        level=[1] * 6,
        template=["add"] * 3 + ["mul"] * 3,
        trainer_state=object(),
        log_extra=lambda name, values: logged.append(name),
        log_metric=lambda name, value: logged.append(name),
    )
    assert rewards == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert all(type(r) is float for r in rewards) and len(rewards) == len(prompts)


def test_reward_reads_conversational_completions_and_numeric_gold():
    completions = [
        [{"role": "assistant", "content": "#### 42"}],
        [{"role": "assistant", "content": "#### 41"}],
    ]
    assert exact_match_reward(["p", "p"], completions, answer=[42, 42.0]) == [1.0, 0.0]


def test_reward_refuses_misaligned_or_numberless_answers():
    with pytest.raises(ValueError, match="one entry per completion"):
        exact_match_reward(["p"] * 2, ["#### 1", "#### 2"], answer=["#### 1"])
    with pytest.raises(ValueError, match="holds no number"):
        exact_match_reward(["p"], ["#### 1"], answer=["no gold here"])


def test_format_bonus_only_for_a_marked_number():
    completions = ["1 + 1 = 2\n#### 2", "the answer is 2", "####", "#### $3"]
    assert format_bonus(["p"] * 4, completions, None, trainer_state=None) == [0.1, 0.0, 0.0, 0.1]
    assert format_bonus(["p"], ["#### 5"], bonus=0.25) == [0.25]
