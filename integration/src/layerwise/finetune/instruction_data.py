"""Instruction / answer jsonl -> token ids with the loss on the answer only.

    text   = prompt_text(instruction) + answer + EOS
    labels = -100 on the prompt (and padding), the token ids on answer + EOS

`prompt_format` (`data.prompt_format`) picks the prompt: "alpaca", PROMPT, the template that LIFT
and LLM-Adapters use for math_10k; or "chat", the tokenizer's chat template with the instruction
as one user turn and the assistant's generation prompt after it (`apply_chat_template(...,
add_generation_prompt=True)`), as an instruct model is prompted. SFT / KD encoding, GRPO's and
KD's generation prompts and the math evaluation all build their prompts with `prompt_text`, so
training and evaluation see the same prompt.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from layerwise_core import UsageError, read_json_lines

__all__ = [
    "PROMPT",
    "PROMPT_FORMATS",
    "check_prompt_format",
    "collate",
    "encode_examples",
    "format_prompt",
    "prompt_text",
    "read_jsonl",
]

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE_INDEX = -100
PROMPT_FORMATS = ("alpaca", "chat")


def format_prompt(instruction: str) -> str:
    """The Alpaca prompt of `instruction` (`prompt_format="alpaca"`)."""
    return PROMPT.format(instruction=instruction)


def check_prompt_format(tokenizer, prompt_format: str) -> None:
    """Refuse an unknown format, and "chat" with a tokenizer that has no chat template."""
    if prompt_format not in PROMPT_FORMATS:
        raise UsageError(f"prompt_format {prompt_format!r}: use one of {PROMPT_FORMATS}")
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "data.prompt_format=chat needs a tokenizer with a chat template, and this one has "
            "none (tokenizer.chat_template is empty): use an instruct model's tokenizer folder "
            "(its tokenizer_config.json / chat_template.jinja) or set data.prompt_format=alpaca"
        )


def prompt_text(tokenizer, instruction: str, prompt_format: str = "alpaca") -> str:
    """The prompt text of `instruction`: the Alpaca template, or one user turn in the
    tokenizer's chat template followed by the assistant's generation prompt ("chat")."""
    check_prompt_format(tokenizer, prompt_format)
    if prompt_format == "alpaca":
        return format_prompt(instruction)
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a missing or empty file, or a line that is not a
    JSON object, is a `UsageError` naming `what` (`"data.train"`) or `path:line`."""
    records = [row for _, row in read_json_lines(path, what)]
    if not records:
        raise UsageError(f"{what} {str(path)!r} holds no examples: add one JSON object per line")
    return records


def encode_examples(
    records: list[dict[str, Any]],
    tokenizer,
    instruction_field: str = "instruction",
    answer_field: str = "answer",
    max_length: int = 256,
    prompt_format: str = "alpaca",
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record; the answer is truncated first when too long. The prompt
    is `prompt_text(tokenizer, instruction, prompt_format)`, tokenized without special tokens (a
    chat template writes its own)."""
    check_prompt_format(tokenizer, prompt_format)
    if tokenizer.eos_token_id is None:
        raise UsageError(
            "the tokenizer has no EOS token, which fine-tuning appends to each answer: use a "
            "model folder whose tokenizer defines eos_token"
        )
    out = []
    for i, record in enumerate(records):
        missing = [f for f in (instruction_field, answer_field) if f not in record]
        if missing:
            raise UsageError(
                f"example {i + 1} lacks {missing} (its keys: {list(record)}): set "
                "data.instruction_field / data.answer_field to the names your file uses"
            )
        text = prompt_text(tokenizer, str(record[instruction_field]), prompt_format)
        prompt = tokenizer(text, add_special_tokens=False)
        answer = tokenizer(str(record[answer_field]), add_special_tokens=False)
        prompt_ids = prompt["input_ids"][:max_length]
        answer_ids = (answer["input_ids"] + [tokenizer.eos_token_id])[
            : max_length - len(prompt_ids)
        ]
        out.append((prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids))
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (padding labelled -100)."""
    width = max(len(ids) for ids, _ in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
