"""MetaMathQA-style supervised data from local JSON lines: "query : ... response : ...".

The Chain-of-Experts paper (arXiv 2506.18945) trains from scratch on MetaMathQA with each record
rendered as its fields joined as `key : value` with single spaces,

    {"query": "What is 2+3?", "response": "2+3=5. The answer is: 5"}
    ->  "query : What is 2+3? response : 2+3=5. The answer is: 5"

tokenised without special tokens, padded (or truncated) to a fixed length, and the LM loss taken
on every non-padding token. This module reads such records from a local `.jsonl` file and builds
the padded `input_ids` / `attention_mask` / `labels` (-100 on padding) that a causal LM takes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "FIELDS",
    "MetaMathDataset",
    "format_example",
    "load_metamath_jsonl",
    "tokenize_examples",
]

FIELDS = ("query", "response")  # MetaMathQA's question and worked answer
Truncation = Literal["right", "left", "error"]


def format_example(example: Mapping[str, Any], fields: Sequence[str] = FIELDS) -> str:
    """`"query : {query} response : {response}"`: each field as `key : value`, space-joined.

    A value that is a one-element list (as some parquet exports store strings) is unwrapped.
    """
    parts = []
    for key in fields:
        if key not in example:
            raise KeyError(
                f"record has no field {key!r} (it has {sorted(example)}): pass fields=... naming "
                "the question and answer fields"
            )
        value = example[key]
        while isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        parts.append(f"{key} : {value}")
    return " ".join(parts).strip()


def load_metamath_jsonl(
    path: str | os.PathLike, fields: Sequence[str] = FIELDS, limit: int | None = None
) -> list[str]:
    """The formatted text of every record of a JSON-lines file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no JSON-lines file at {path}")
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(texts) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
            if not isinstance(record, Mapping):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
                )
            try:
                texts.append(format_example(record, fields))
            except KeyError as err:
                raise KeyError(f"{path}:{number}: {err.args[0]}") from None
    return texts


def tokenize_examples(
    texts: Sequence[str], tokenizer, max_length: int, truncation: Truncation = "right"
) -> dict[str, torch.Tensor]:
    """Pad every text to `max_length` tokens; labels are the ids with -100 on padding.

    Args:
        texts: formatted examples (`format_example`).
        tokenizer: a Hugging Face tokenizer with a pad token; no special tokens are added.
        max_length: tokens per example.
        truncation: for longer texts, keep the first max_length tokens ("right", the paper's
            setting), the last ones ("left"), or raise ("error").

    Returns:
        `input_ids`, `attention_mask` and `labels`, each [len(texts), max_length] int64.
    """
    if truncation not in ("right", "left", "error"):
        raise ValueError(f"truncation must be 'right', 'left' or 'error', got {truncation!r}")
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError(
            "tokenize_examples needs a tokenizer with a pad token: set tokenizer.pad_token "
            "(e.g. to its EOS token) first"
        )
    ids = torch.full((len(texts), max_length), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) > max_length:
            if truncation == "error":
                raise ValueError(
                    f"example {row} has {len(tokens)} tokens > max_length {max_length}: raise "
                    "max_length or pass truncation='right'"
                )
            tokens = tokens[:max_length] if truncation == "right" else tokens[-max_length:]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class MetaMathDataset(torch.utils.data.Dataset):
    """A `.jsonl` of MetaMathQA-style records as padded causal-LM examples (tokenised up front).

    Items are dicts of `input_ids`, `attention_mask`, `labels` ([max_length] each), ready for the
    default collate function and `model(**batch)`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer,
        max_length: int = 512,
        fields: Sequence[str] = FIELDS,
        truncation: Truncation = "right",
        limit: int | None = None,
    ) -> None:
        self.texts = load_metamath_jsonl(path, fields, limit)
        self.tensors = tokenize_examples(self.texts, tokenizer, max_length, truncation)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}
