"""Rewards for RL on generated math problems (small-reasoning-LMs spec, section 4), with TRL's
reward-function contract (`GRPOTrainer` calls every reward function with keywords only):

    f(prompts=..., completions=..., completion_ids=..., **kw) -> list[float | None]

`kw` holds every dataset column, repeated once per completion (here `answer`: the gold chain of
thought ending in `#### N`, or the number N), plus `trainer_state`, `log_extra`, `log_metric`.
A completion is text, or (conversational datasets) a list of messages whose last `content` counts.

    exact_match_reward:  r = 1 if extract_answer(completion) == gold number else 0
    format_bonus:        r = bonus (0.1) if the completion has `#### <number>` else 0

The extraction rule (`extract_answer`) is the evaluation's (`layerwise.eval.math_generation`), so
training reward and test accuracy read a completion the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from layerwise.eval.math_generation import extract_answer, gold_number

__all__ = ["completion_text", "exact_match_reward", "extract_answer", "format_bonus"]

_MARKED = re.compile(r"####\s*\$?-?\d")


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of a completion: a string as is, a list of chat messages as its last content."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    return str(completion[-1].get("content", ""))


def exact_match_reward(
    prompts: Sequence[Any],
    completions: Sequence[str | Sequence[dict[str, Any]]],
    completion_ids: Sequence[Sequence[int]] | None = None,
    *,
    answer: Sequence[str | int | float],
    **kw: Any,
) -> list[float]:
    """1.0 where the completion's extracted answer equals the gold number exactly, else 0.0 (no
    number found: 0.0). `answer[i]` belongs to `completions[i]` (TRL repeats columns G times)."""
    if len(answer) != len(completions):
        raise ValueError(
            f"exact_match_reward got {len(completions)} completions but {len(answer)} answers: "
            "pass the dataset's answer column, one entry per completion"
        )
    rewards = []
    for i, (completion, gold) in enumerate(zip(completions, answer)):
        target = gold_number(gold)
        if target is None:
            raise ValueError(
                f"answer {i} ({str(gold)[-40:]!r}) holds no number: a gold answer ends in '#### N'"
            )
        predicted = extract_answer(completion_text(completion))
        rewards.append(1.0 if predicted is not None and predicted == target else 0.0)
    return rewards


def format_bonus(
    prompts: Sequence[Any],
    completions: Sequence[str | Sequence[dict[str, Any]]],
    completion_ids: Sequence[Sequence[int]] | None = None,
    *,
    bonus: float = 0.1,
    **kw: Any,
) -> list[float]:
    """`bonus` where the completion states its answer after the `####` marker, else 0.0 (the
    spec's optional format reward, off unless a config adds it; log it separately)."""
    return [bonus if _MARKED.search(completion_text(c)) else 0.0 for c in completions]
