"""Multi-step arithmetic word problems with a gold chain of thought, at three difficulty levels
(the offline stand-in for GSM8K of the small-reasoning-LMs study, spec section 4).

A problem is a template (a chain of operations, one per step) and an operand tuple
`(x_0, b_1, ..., b_L)`; the state starts at `x_0` and each step applies `x_i = x_{i-1} op_i b_i`:

    level 1: L = 1 step,  x_0 and +/- operands in 1..99,  * / factors in 2..9
    level 2: L = 2 steps, x_0 and +/- operands in 1..99,  * / factors in 2..9
    level 3: L = 3 steps, x_0 and +/- operands in 1..999, * / factors in 2..12

Every intermediate `x_i` is a non-negative integer: subtraction never goes below zero and
division is exact. The gold answer is one line per step, `x_{i-1} op b_i = x_i`, then `#### x_L`.
Names and items are surface only: the identity of a problem is `(template, operands)`, so splits
that are disjoint by that key cannot share a problem in a different costume.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVELS", "ProblemKey", "generate_reasoning_problems", "problem_key", "reasoning_splits"]

ProblemKey = tuple[str, tuple[int, ...]]  # (template id, operand tuple)

_NAMES = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
          "Kira", "Liam", "Mia", "Noah", "Olga", "Pedro", "Rosa", "Sam", "Tara", "Yusuf"]  # fmt: skip
_ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cookies", "cards",
          "shells", "stickers", "eggs", "flowers"]  # fmt: skip
_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_STEP_TEXT = {  # surface variants of one step on the current count; {b} is the operand
    "add": ["{name} finds {b} more {item}.", "{other} gives {name} {b} more {item}."],
    "sub": ["{name} gives {b} {item} to {other}.", "{name} loses {b} of the {item}."],
    "mul": [
        "Then {name} ends up with {b} times as many {item} as before.",
        "The number of {item} {name} has then grows {b} times.",
    ],
    "div": [
        "{name} splits the {item} into {b} equal groups and keeps one group.",
        "{name} shares the {item} equally with {other} and friends, {b} people in all, "
        "and keeps one share.",
    ],
}


@dataclass(frozen=True)
class Level:
    steps: int  # operations per problem
    addend: int  # x_0 and the operands of + and - lie in 1..addend
    factor: int  # the operands of * and / lie in 2..factor


LEVELS = {1: Level(1, 99, 9), 2: Level(2, 99, 9), 3: Level(3, 999, 12)}


def problem_key(record: dict[str, Any]) -> ProblemKey:
    """The identity of a generated problem: (template id, operand tuple)."""
    return record["template"], tuple(record["operands"])


def _draw(rng: random.Random, level: int) -> tuple[str, tuple[int, ...], list[str]] | None:
    """One template and operand tuple with non-negative integer intermediates, or None when the
    drawn chain cannot continue (e.g. division of a prime); the caller draws again."""
    spec = LEVELS[level]
    ops = [rng.choice(list(_OPS)) for _ in range(spec.steps)]
    x = rng.randint(1, spec.addend)
    operands, lines = [x], []
    for op in ops:
        if op == "add":
            b = rng.randint(1, spec.addend)
            y = x + b
        elif op == "sub":
            if x < 2:
                return None
            b = rng.randint(1, min(x - 1, spec.addend))  # keeps the count positive
            y = x - b
        elif op == "mul":
            b = rng.randint(2, spec.factor)
            y = x * b
        else:
            divisors = [d for d in range(2, spec.factor + 1) if x % d == 0]
            if not divisors:
                return None
            b = rng.choice(divisors)
            y = x // b
        lines.append(f"{x} {_OPS[op]} {b} = {y}")
        operands.append(b)
        x = y
    return "-".join(ops), tuple(operands), lines


def _record(rng: random.Random, level: int, template: str, operands: tuple[int, ...], lines):
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    steps = [
        rng.choice(_STEP_TEXT[op]).format(name=name, other=other, item=item, b=b)
        for op, b in zip(template.split("-"), operands[1:])
    ]
    question = " ".join(
        [f"{name} has {operands[0]} {item}.", *steps, f"How many {item} does {name} have now?"]
    )
    final = int(lines[-1].rsplit("= ", 1)[1])
    return {
        "instruction": question,
        "answer": "\n".join([*lines, f"#### {final}"]),
        "final": final,
        "level": level,
        "template": template,
        "operands": list(operands),
    }


def generate_reasoning_problems(
    n: int, *, level: int, seed: int, exclude: Collection[ProblemKey] = ()
) -> list[dict[str, Any]]:
    """`n` distinct level-`level` problems drawn with `random.Random(seed)`, none of whose
    `problem_key` is in `exclude` (pass another split's keys to keep the two disjoint).

    Records: instruction, answer (gold CoT: `a op b = c` per step, then `#### N`), final (N),
    level, template (e.g. "add-mul"), operands ([x_0, b_1, ...])."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct level-{level} problems: lower the count")
        drawn = _draw(rng, level)
        if drawn is None or (drawn[0], drawn[1]) in seen:
            continue
        seen.add((drawn[0], drawn[1]))
        out.append(_record(rng, level, *drawn))
    return out


def _split_seed(seed: int, split: str, level: int) -> int:
    digest = hashlib.sha256(f"reasoning\x00{seed}\x00{split}\x00{level}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def reasoning_splits(
    train: int = 5000,
    val: int = 200,
    test: int = 500,
    levels: Sequence[int] = (1, 2, 3),
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Train / val / test sets, each spread evenly over `levels` (the remainder goes to the first
    levels), drawn from separate seeds derived from `(seed, split, level)`, and disjoint by
    `problem_key`. Test is drawn first and val second, so neither changes with the train size.
    Each split is shuffled (levels interleaved) by its own seed."""
    sizes = {"test": test, "val": val, "train": train}
    taken: set[ProblemKey] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, size in sizes.items():
        records: list[dict[str, Any]] = []
        for i, level in enumerate(levels):
            count = size // len(levels) + (1 if i < size % len(levels) else 0)
            part = generate_reasoning_problems(
                count, level=level, seed=_split_seed(seed, split, level), exclude=taken
            )
            taken.update(problem_key(r) for r in part)
            records += part
        random.Random(_split_seed(seed, split, 0)).shuffle(records)
        out[split] = records
    return {name: out[name] for name in ("train", "val", "test")}
