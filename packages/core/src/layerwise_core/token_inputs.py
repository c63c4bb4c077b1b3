"""Token ids as a tensor or as a batch mapping, accepted the same way by every package.

A function that runs a model on token ids takes `input_ids` as either

- a LongTensor (batch, length), with the mask (if any) as `attention_mask=...`, or
- a mapping with `"input_ids"` and optionally `"attention_mask"`: a collator's batch, or a
  tokenizer's `BatchEncoding` (`tokenizer(texts, return_tensors="pt", padding=True)`).

`token_inputs` turns both into `(input_ids, attention_mask)`; other keys (`labels`, ...) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["TokenInputs", "token_inputs"]

TokenInputs = torch.Tensor | Mapping[str, Any]  # what a function taking token ids accepts


def token_inputs(
    input_ids: torch.Tensor | Mapping[str, Any] | None,
    attention_mask: torch.Tensor | None = None,
    *,
    what: str = "input_ids",
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(input_ids, attention_mask) from a tensor (+ mask) or a batch mapping (see module docstring).

    `None` passes through (for functions whose ids are optional). `what` names the caller in errors.
    """
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise ValueError(
                f"{what}: a batch mapping needs an 'input_ids' entry; got keys {sorted(input_ids)}"
            )
        inner_mask = input_ids.get("attention_mask")
        if inner_mask is not None and attention_mask is not None:
            raise ValueError(
                f"{what}: the batch already holds an 'attention_mask'; do not also pass "
                "attention_mask=..."
            )
        attention_mask = inner_mask if inner_mask is not None else attention_mask
        input_ids = input_ids["input_ids"]
    if input_ids is None:
        return None, attention_mask
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"{what}: expected token ids as a LongTensor (batch, length) or a mapping with "
            f"'input_ids', got {type(input_ids).__name__}; use torch.tensor(ids) or "
            "tokenizer(..., return_tensors='pt')"
        )
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"{what}: attention_mask must be a tensor, got {type(attention_mask).__name__}"
        )
    return input_ids, attention_mask
