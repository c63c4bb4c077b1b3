"""NAP's SFT data: several independent reasoning trajectories per example, then a summary.

Li et al., "Why Diffusion Language Models Struggle with Truly Parallel (Non-Autoregressive)
Decoding?", arXiv:2602.23225 (NAP); code pixeli99/NAP. Each target is the structured canvas

    <think 1>R1</think 1>
    <think 2>R2</think 2>
    ...
    <think m>Rm</think m>
    <summary>S</summary>

R_j are complete, independent solutions of the question (none refers to another, so no segment
has to wait for the one before it) and S states the answer, which sits last: the fine-tuning
pipeline scores the last number of the target. Written as the JSON-lines records that
`layerwise finetune` reads (`{"instruction": question, "answer": target}`, see
`instruction_data.py`); its reader appends EOS to the target.

What comes from where. The tag strings, their numbering from 1, the closing tags and the summary
block are NAP's trainer (`src/trainer/fsdp_sft_trainer.py`: `build_structure_special_tokens` adds
`<think i>`, `</think i>` for i <= `hsms.max_think_blocks` = 6, and `<summary>`, `</summary>`, to
the tokenizer as special tokens; `src/diffllm/gen_utils.py`: `parse_structure_blocks` pairs each
`<think i>` with the next closing tag and reads the first `<summary> ... </summary>`); the layout
order is the README's canvas. NAP's SFT file itself (`pengxiang/SFT_THINK`) is not in reach, so
the newline between blocks and the optional fixed `width` of a trajectory (to line trajectories up
with `dlm_decode.ParallelForced(segments=...)`) are ours; the released data has free lengths.
Add `structure_tokens()` to the tokenizer as NAP does, or the tags are split into sub-words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

__all__ = [
    "MAX_THINK_BLOCKS",
    "arithmetic_nap_records",
    "arithmetic_trajectories",
    "long_cot_target",
    "nap_record",
    "nap_target",
    "parse_nap_target",
    "structure_tokens",
]

MAX_THINK_BLOCKS = 6  # NAP's `diffusion.hsms.max_think_blocks`: the numbered tags it adds
SUMMARY_OPEN, SUMMARY_CLOSE = "<summary>", "</summary>"


def _think_tags(i: int) -> tuple[str, str]:
    return f"<think {i}>", f"</think {i}>"


def structure_tokens(max_blocks: int = MAX_THINK_BLOCKS) -> list[str]:
    """The special tokens NAP adds to the tokenizer, in its order: `<think i>`, `</think i>` for
    i = 1..max_blocks, then `<think>`, `</think>`, `<summary>`, `</summary>`."""
    tokens = [tag for i in range(1, max_blocks + 1) for tag in _think_tags(i)]
    return [*tokens, "<think>", "</think>", SUMMARY_OPEN, SUMMARY_CLOSE]


def nap_target(
    trajectories: Sequence[str],
    summary: str,
    *,
    separator: str = "\n",
    width: int | None = None,
    filler: str = " ",
) -> str:
    """The NAP canvas of `trajectories` (in the given order, numbered from 1) and `summary`.

    `width`: pad every trajectory on the right with `filler` to exactly `width` characters, so
    that trajectory j fills the same span in every target (ours, for fixed decoding segments).
    """
    if not trajectories:
        raise ValueError("NAP needs at least one trajectory per example: pass a non-empty list")
    if len(trajectories) > MAX_THINK_BLOCKS:
        raise ValueError(
            f"{len(trajectories)} trajectories exceed NAP's {MAX_THINK_BLOCKS} numbered think "
            "blocks (hsms.max_think_blocks): pass at most 6"
        )
    if len(filler) != 1:
        raise ValueError(f"filler must be one character, got {filler!r}")
    for text in [*trajectories, summary]:
        found = [tag for tag in structure_tokens() if tag in text]
        if found:
            raise ValueError(f"a trajectory or summary contains the structure text {found[0]!r}")
    blocks = []
    for i, text in enumerate(trajectories, start=1):
        if width is not None:
            if len(text) > width:
                raise ValueError(
                    f"trajectory {i} has {len(text)} characters, more than width={width}: "
                    "raise width or shorten the trajectory"
                )
            text = text.ljust(width, filler)
        opening, closing = _think_tags(i)
        blocks.append(f"{opening}{text}{closing}")
    blocks.append(f"{SUMMARY_OPEN}{summary}{SUMMARY_CLOSE}")
    return separator.join(blocks)


_BLOCK = re.compile(r"<think (\d+)>(.*?)</think \1>", re.DOTALL)
_SUMMARY = re.compile(re.escape(SUMMARY_OPEN) + r"(.*?)" + re.escape(SUMMARY_CLOSE), re.DOTALL)


def parse_nap_target(text: str, *, filler: str | None = None) -> tuple[list[str], str | None]:
    """(trajectories in order of appearance, summary or None) of a NAP target or decoded canvas:
    the inverse of `nap_target` (`filler`: strip that padding from the right of each)."""
    trajectories = [m.group(2) for m in _BLOCK.finditer(text)]
    if filler is not None:
        trajectories = [t.rstrip(filler) for t in trajectories]
    summary = _SUMMARY.search(text)
    return trajectories, None if summary is None else summary.group(1)


def long_cot_target(trajectories: Sequence[str], summary: str, *, separator: str = "\n") -> str:
    """The matched sequential control: the same trajectories and summary as one chain, without
    NAP's structure (the Long-CoT SFT data NAP compares against has no parallel blocks)."""
    return separator.join([*trajectories, summary])


def nap_record(
    question: str,
    trajectories: Sequence[str],
    answer: str | int,
    *,
    summary: str | None = None,
    instruction_field: str = "instruction",
    answer_field: str = "answer",
    **layout,
) -> dict[str, str]:
    """One `layerwise finetune` record: {instruction_field: question, answer_field: the NAP
    target}. The summary defaults to "The answer is {answer}." (the answer is the target's last
    number); a given summary must end with the answer. `layout`: `nap_target`'s keywords."""
    answer = str(answer)
    summary = f"The answer is {answer}." if summary is None else summary
    if not summary.rstrip(". ").endswith(answer):
        raise ValueError(
            f"the summary {summary!r} must end with the answer {answer!r} (the fine-tuning "
            "evaluation reads the target's last number)"
        )
    return {instruction_field: question, answer_field: nap_target(trajectories, summary, **layout)}


def arithmetic_trajectories(a: int, b: int) -> list[str]:
    """Independent derivations of a + b (0 <= a, b <= 99), each complete and ending in the sum,
    none using another's result: tens then ones, ones then tens, a plus b's parts, b plus a's
    parts (distinct texts only: a == b makes the last two equal)."""
    if not (0 <= a <= 99 and 0 <= b <= 99):
        raise ValueError(f"the arithmetic task adds two numbers of at most 2 digits, got {a}, {b}")
    at, ao, bt, bo = a - a % 10, a % 10, b - b % 10, b % 10
    total = a + b
    candidates = [
        f"{at}+{bt}={at + bt}, {ao}+{bo}={ao + bo}, {at + bt}+{ao + bo}={total}",
        f"{ao}+{bo}={ao + bo}, {at}+{bt}={at + bt}, {ao + bo}+{at + bt}={total}",
        f"{a}+{bt}={a + bt}, {a + bt}+{bo}={total}",
        f"{b}+{at}={b + at}, {b + at}+{ao}={total}",
    ]
    return list(dict.fromkeys(candidates))


def arithmetic_nap_records(
    pairs: Sequence[tuple[int, int]],
    trajectories: int = 3,
    seed: int = 0,
    *,
    layout: str = "nap",
    **options,
) -> list[dict[str, str]]:
    """Records for the addition task of `examples/dlm_arithmetic.py`: the question "47+85?",
    `trajectories` independent derivations drawn (in random order, from `seed`) from
    `arithmetic_trajectories`, and the summary "47+85=132" (the example's target: the sum as three
    digits, last). `layout="long_cot"` writes the same content as one chain (the control).
    `options`: instruction_field / answer_field, and the layout's keywords (`nap_target`:
    separator, width, filler; `long_cot_target`: separator)."""
    if layout not in ("nap", "long_cot"):
        raise ValueError(f"layout must be 'nap' or 'long_cot', got {layout!r}")
    if trajectories < 1:
        raise ValueError(f"trajectories must be >= 1, got {trajectories}")
    names = {k: options.pop(k) for k in ("instruction_field", "answer_field") if k in options}
    question_key = names.get("instruction_field", "instruction")
    answer_key = names.get("answer_field", "answer")
    rng = random.Random(seed)
    records = []
    for a, b in pairs:
        found = arithmetic_trajectories(a, b)
        chosen = rng.sample(found, min(trajectories, len(found)))
        question = f"{a:02d}+{b:02d}?"
        summary = f"{a:02d}+{b:02d}={a + b:03d}"
        if layout == "nap":
            target = nap_target(chosen, summary, **options)
        else:
            target = long_cot_target(chosen, summary, **options)
        records.append({question_key: question, answer_key: target})
    return records
