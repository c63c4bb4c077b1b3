"""Generation-based math evaluation with the last-number exact-match scorer of LIFT / LLM-Adapters
(`run_math_parallel.py::extract_answer_number`):

    prediction = float(last match of  -?\\d+\\.?\\d*  in the output with commas removed)
    correct    = |prediction - answer| <= 0.001

Decoding is greedy; prompts of a batch are left-padded so that every continuation starts at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from layerwise_core import pad_token_rows

__all__ = ["MathEvalResult", "evaluate_math_generation", "last_number", "math_exact_match"]

_NUMBER = re.compile(r"-?\d+\.?\d*")


def last_number(text: str) -> float | None:
    """The last number in `text` (commas removed first: "1,234" is 1234), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:  # pragma: no cover - the pattern only matches floats
        return None


def math_exact_match(prediction: str, answer: str | float, tolerance: float = 1e-3) -> bool:
    """True when the last number of `prediction` is within `tolerance` of the answer's number."""
    predicted = last_number(prediction)
    target = float(answer) if isinstance(answer, (int, float)) else last_number(str(answer))
    if predicted is None or target is None or not math.isfinite(predicted):
        return False
    return abs(predicted - target) <= tolerance


@dataclass
class MathEvalResult:
    accuracy: float  # correct / total
    correct: int
    total: int
    records: list[dict[str, Any]] = field(default_factory=list)  # prompt, output, answer, correct


@torch.no_grad()
def evaluate_math_generation(
    model: torch.nn.Module,
    tokenizer,
    problems: Sequence[dict[str, Any]],
    prompt_fn: Callable[[str], str],
    *,
    question_field: str = "instruction",
    answer_field: str = "answer",
    max_new_tokens: int = 64,
    batch_size: int = 16,
    tolerance: float = 1e-3,
) -> MathEvalResult:
    """Greedy-decode an answer to every problem and score it with `math_exact_match`.

    `problems` are records with a question and an answer (text whose last number is the answer,
    or a number); `prompt_fn(question)` builds the model input.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    records: list[dict[str, Any]] = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [prompt_fn(p[question_field]) for p in chunk]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        ids, mask = pad_token_rows(encoded, pad, left=True)
        width = ids.shape[1]
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for problem, prompt, row in zip(chunk, prompts, out[:, width:]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            answer = problem[answer_field]
            records.append(
                {
                    "prompt": prompt,
                    "output": text,
                    "answer": answer,
                    "predicted": last_number(text),
                    "correct": math_exact_match(text, answer, tolerance),
                }
            )
    model.train(was_training)
    correct = sum(r["correct"] for r in records)
    total = len(records)
    return MathEvalResult(correct / max(1, total), correct, total, records)
