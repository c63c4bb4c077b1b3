"""Generation-based math evaluation. Two scorers:

`extract="last_number"` (the default): LIFT / LLM-Adapters' last-number exact match
(`run_math_parallel.py::extract_answer_number`):

    prediction = float(last match of  -?\\d+\\.?\\d*  in the output with commas removed)
    correct    = |prediction - answer| <= 0.001

`extract="marker"`: the GSM8K-style rule of the small-reasoning-LMs spec (section 4),
`extract_answer`: the number after the last `####` marker if there is one, else the last number;
`,` and `$` stripped, `3.0` read as 3; correct iff it equals the gold number exactly.

Greedy decoding always; optionally `samples` = n completions per problem at `temperature`, scored
with the unbiased pass@k estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1), per problem with c
correct of n:

    pass@k = 1 - C(n - c, k) / C(n, k)          (n = k: 1 if any sample is correct, else 0)

averaged over problems. Records carrying a `level` also get per-level accuracy and pass@k.
Prompts of a batch are left-padded so that every continuation starts at once.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from layerwise_core import pad_token_rows, seeded_torch_rng

__all__ = [
    "EXTRACTORS",
    "MathEvalResult",
    "evaluate_math_generation",
    "extract_answer",
    "gold_number",
    "last_number",
    "marker_exact_match",
    "math_exact_match",
    "pass_at_k",
]

EXTRACTORS = ("last_number", "marker")
_NUMBER = re.compile(r"-?\d+\.?\d*")
_MARKED_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # "1,234" whole; a trailing "." left out
MARKER = "####"


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


def _normalise(number: str) -> int | float:
    number = number.replace(",", "").rstrip(".")
    if "." not in number:
        return int(number)
    value = float(number)
    return int(value) if value.is_integer() else value


def extract_answer(text: str) -> int | float | None:
    """The answer of a completion (spec section 4): the first number after the last `####`
    marker when the text has one (None if no number follows it), else the last number in the
    text; `,` and `$` are stripped and an integral value is an int ("3.0" -> 3). None: no number."""
    text = text.replace("$", "")
    if MARKER in text:
        found = _MARKED_NUMBER.search(text.rsplit(MARKER, 1)[1])
        return _normalise(found.group()) if found else None
    found = _MARKED_NUMBER.findall(text)
    return _normalise(found[-1]) if found else None


def gold_number(answer: str | int | float) -> int | float | None:
    """The gold number of a record's answer: a number as is (integral floats as int), text (a
    gold chain of thought ending in `#### N`) through `extract_answer`."""
    if isinstance(answer, bool):
        raise TypeError("a gold answer must be a number or text, got a bool")
    if isinstance(answer, (int, float)):
        return int(answer) if float(answer).is_integer() else answer
    return extract_answer(str(answer))


def marker_exact_match(prediction: str, answer: str | int | float) -> bool:
    """True when `extract_answer(prediction)` equals the gold number exactly."""
    predicted, target = extract_answer(prediction), gold_number(answer)
    return predicted is not None and target is not None and predicted == target


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased pass@k from n samples of which c are correct:
    1 - C(n - c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class MathEvalResult:
    accuracy: float  # greedy: correct / total
    correct: int
    total: int
    records: list[dict[str, Any]] = field(default_factory=list)  # prompt, output, answer, correct
    per_level: dict[Any, float] = field(default_factory=dict)  # greedy accuracy by record level
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> mean pass@k (sampled)
    per_level_pass_at: dict[Any, dict[int, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything except the per-problem records (for a JSON report)."""
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_level": self.per_level,
            "pass_at": self.pass_at,
            "per_level_pass_at": self.per_level_pass_at,
        }


def _prompt_text(tokenizer, prompt: str, chat_template: bool) -> str:
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat_template=True needs a tokenizer with a chat template (tokenizer.chat_template "
            "is empty): use an instruct model's tokenizer or pass chat_template=False"
        )
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _generate(model, tokenizer, encoded: list[list[int]], batch_size: int, **generate_kw):
    """Decoded continuations of `encoded` prompts (left-padded batches of `batch_size` rows)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = pad_token_rows(encoded[start : start + batch_size], pad, left=True)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **generate_kw,
        )
        texts += [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, ids.shape[1] :]]
    return texts


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
    extract: str = "last_number",
    chat_template: bool = False,
    samples: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    pass_k: Sequence[int] = (),
    seed: int = 0,
    level_field: str = "level",
) -> MathEvalResult:
    """Greedy-decode an answer to every problem and score it (`extract`: "last_number", LIFT's
    scorer with `tolerance`, or "marker", the spec's `####`-aware exact match; see module doc).

    `problems` are records with a question and an answer (text whose last number, or `#### N`,
    is the answer, or a number); `prompt_fn(question)` builds the model input, wrapped as one
    user turn in the tokenizer's chat template when `chat_template`. `samples` > 0 also draws
    that many completions per problem (temperature / top_p / top_k; top_k 0 is off, as in TRL)
    under `torch.manual_seed(seed)` without touching the caller's RNG, and reports pass@k for
    each k in `pass_k` (default: k = samples). Records with a `level_field` value are also
    scored per level.
    """
    if extract not in EXTRACTORS:
        raise ValueError(f"extract must be one of {EXTRACTORS}, got {extract!r}")
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    ks = tuple(pass_k) or ((samples,) if samples else ())
    if ks and not samples:
        raise ValueError("pass_k needs samples > 0: pass samples=n (n >= every k)")
    for k in ks:
        if not 1 <= k <= samples:
            raise ValueError(f"pass@{k} needs 1 <= k <= samples={samples}")

    def score(text: str, answer) -> tuple[int | float | None, bool]:
        if extract == "marker":
            return extract_answer(text), marker_exact_match(text, answer)
        return last_number(text), math_exact_match(text, answer, tolerance)

    was_training = model.training
    model.eval()
    prompts = [
        _prompt_text(tokenizer, prompt_fn(p[question_field]), chat_template) for p in problems
    ]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    greedy = _generate(
        model, tokenizer, encoded, batch_size, max_new_tokens=max_new_tokens, do_sample=False
    )
    records: list[dict[str, Any]] = []
    for problem, prompt, text in zip(problems, prompts, greedy):
        predicted, correct = score(text, problem[answer_field])
        record = {
            "prompt": prompt,
            "output": text,
            "answer": problem[answer_field],
            "predicted": predicted,
            "correct": correct,
        }
        if level_field in problem:
            record["level"] = problem[level_field]
        records.append(record)
    if samples:
        device = next(model.parameters()).device
        with seeded_torch_rng(seed, device):
            drawn = _generate(
                model,
                tokenizer,
                [ids for ids in encoded for _ in range(samples)],
                batch_size,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
            )
        for i, (problem, record) in enumerate(zip(problems, records)):
            texts = drawn[i * samples : (i + 1) * samples]
            record["samples"] = texts
            record["sample_correct"] = [score(t, problem[answer_field])[1] for t in texts]
    model.train(was_training)

    def pass_rates(group: list[dict[str, Any]]) -> dict[int, float]:
        return {
            k: sum(pass_at_k(samples, sum(r["sample_correct"]), k) for r in group) / len(group)
            for k in ks
        }

    correct = sum(r["correct"] for r in records)
    total = len(records)
    by_level: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if "level" in r:
            by_level[r["level"]].append(r)
    levels = sorted(by_level)
    return MathEvalResult(
        accuracy=correct / max(1, total),
        correct=correct,
        total=total,
        records=records,
        per_level={
            lv: sum(r["correct"] for r in by_level[lv]) / len(by_level[lv]) for lv in levels
        },
        pass_at=pass_rates(records) if ks and records else {},
        per_level_pass_at={lv: pass_rates(by_level[lv]) for lv in levels} if ks else {},
    )
