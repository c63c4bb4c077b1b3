"""Generated arithmetic word problems: instruction / answer pairs with a worked answer whose last
number is the result (the format the last-number scorer reads)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

__all__ = ["generate_word_problems", "write_jsonl"]

_NAMES = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
          "Kira", "Liam", "Mia", "Noah", "Olga", "Pedro", "Rosa", "Sam", "Tara", "Yusuf"]  # fmt: skip
_ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cookies", "cards",
          "shells", "stickers", "eggs", "flowers"]  # fmt: skip


def _problem(rng: random.Random) -> dict[str, str]:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        return {
            "instruction": q,
            "answer": f"{name} has {a} + {b} = {a + b} {item}. The answer is {a + b}.",
        }
    if kind == 1:
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        return {
            "instruction": q,
            "answer": f"{name} has {a} - {b} = {a - b} {item} left. The answer is {a - b}.",
        }
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        return {
            "instruction": q,
            "answer": f"{name} buys {a} * {b} = {a * b} {item}. The answer is {a * b}.",
        }
    if kind == 3:
        b = rng.randint(2, 9)
        a = b * rng.randint(2, 12)
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        return {
            "instruction": q,
            "answer": f"Each friend gets {a} / {b} = {a // b} {item}. The answer is {a // b}.",
        }
    a, b = rng.randint(5, 50), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    q = (
        f"{name} has {a} {item}, finds {b} more and then gives {c} to {other}. "
        f"How many {item} does {name} have now?"
    )
    return {
        "instruction": q,
        "answer": f"{name} has {a} + {b} = {a + b}, then {a + b} - {c} = {a + b - c} {item}. "
        f"The answer is {a + b - c}.",
    }


def generate_word_problems(
    count: int, seed: int = 0, exclude: set[str] | None = None
) -> list[dict[str, str]]:
    """`count` distinct problems (addition, subtraction, multiplication, division, two steps).

    `exclude`: questions not to produce (pass the training questions to build a held-out set).
    """
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict[str, str]] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct problems: lower the count")
        problem = _problem(rng)
        if problem["instruction"] not in seen:
            seen.add(problem["instruction"])
            out.append(problem)
    return out


def write_jsonl(records: list[dict[str, str]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
