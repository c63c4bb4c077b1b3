"""Instruction / answer jsonl -> token ids with the loss on the answer only.

    text   = PROMPT.format(instruction) + answer + EOS
    labels = -100 on the prompt (and padding), the token ids on answer + EOS

PROMPT is the Alpaca template that LIFT and LLM-Adapters use for math_10k.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from layerwise_core import UsageError, read_json_lines

__all__ = ["PROMPT", "collate", "encode_examples", "format_prompt", "read_jsonl"]

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE_INDEX = -100


def format_prompt(instruction: str) -> str:
    return PROMPT.format(instruction=instruction)


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
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record; the answer is truncated first when too long."""
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
        prompt = tokenizer(format_prompt(str(record[instruction_field])), add_special_tokens=False)
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
