"""The levelled multi-step word-problem generator (small-reasoning-LMs spec section 6 T7): the
same seed gives the same set, every gold chain of thought re-evaluates step by step to its answer
with non-negative integer intermediates and exact division, operands stay in their level's range,
and the train / val / test splits are disjoint by (template, operands)."""

from __future__ import annotations

import operator
import re

import pytest

from layerwise.eval.math_generation import last_number
from layerwise.finetune.reasoning_data import (
    LEVELS,
    generate_reasoning_problems,
    problem_key,
    reasoning_splits,
)
from layerwise.finetune.rewards import extract_answer

_STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def test_same_seed_same_problems_other_seed_other_problems():
    a = generate_reasoning_problems(40, level=2, seed=3)
    assert a == generate_reasoning_problems(40, level=2, seed=3)
    b = generate_reasoning_problems(40, level=2, seed=4)
    assert {problem_key(r) for r in a} != {problem_key(r) for r in b}
    assert len({problem_key(r) for r in a}) == 40  # distinct within a set


@pytest.mark.parametrize("level", [1, 2, 3])
def test_gold_chain_of_thought_re_evaluates_to_the_answer(level):
    spec = LEVELS[level]
    for r in generate_reasoning_problems(300, level=level, seed=level):
        *steps, last = r["answer"].split("\n")
        ops = r["template"].split("-")
        assert len(steps) == len(ops) == spec.steps == level == r["level"]
        x = r["operands"][0]
        assert 1 <= x <= spec.addend
        for line, op, b in zip(steps, ops, r["operands"][1:]):
            lhs, symbol, rhs, result = _STEP.match(line).groups()
            assert (int(lhs), symbol, int(rhs)) == (x, _SYMBOL[op], b)
            if symbol in "*/":
                assert 2 <= b <= spec.factor
            else:
                assert 1 <= b <= spec.addend
            if symbol == "/":
                assert x % b == 0  # exact division
            x = _APPLY[symbol](x, b)
            assert x == int(result) and x >= 0  # non-negative integer intermediates
        assert last == f"#### {x}" and r["final"] == x
        assert extract_answer(r["answer"]) == x and last_number(r["answer"]) == x  # both scorers
        words = r["instruction"]
        assert all(re.search(rf"\b{v}\b", words) for v in r["operands"])  # every step is asked
        assert words.endswith("have now?")


def test_exclude_is_respected():
    first = generate_reasoning_problems(100, level=1, seed=0)
    taken = {problem_key(r) for r in first}
    again = generate_reasoning_problems(100, level=1, seed=0, exclude=taken)
    assert not taken & {problem_key(r) for r in again}


def test_splits_are_disjoint_balanced_and_test_is_stable():
    splits = reasoning_splits()  # the spec's sizes: 5000 / 200 / 500
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5000, 200, 500]
    keys = {name: {problem_key(r) for r in rows} for name, rows in splits.items()}
    assert len(keys["train"]) == 5000 and len(keys["test"]) == 500  # no duplicate inside a split
    assert not keys["test"] & keys["train"]  # the leakage check
    assert not keys["val"] & keys["train"] and not keys["val"] & keys["test"]
    assert [sum(r["level"] == lv for r in splits["test"]) for lv in (1, 2, 3)] == [167, 167, 166]
    assert {r["level"] for r in splits["train"][:30]} == {1, 2, 3}  # levels interleaved
    smaller = reasoning_splits(train=300, val=20, test=500)
    assert smaller["test"] == splits["test"]  # test drawn first: independent of the train size
    other = reasoning_splits(train=300, val=20, test=500, seed=1)
    assert {problem_key(r) for r in other["test"]} != keys["test"]


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="level must be one of"):
        generate_reasoning_problems(1, level=4, seed=0)
