"""Token-id rows of different lengths as one padded batch, and the id to pad with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layerwise_core.deprecation import renamed_kwargs

__all__ = ["pad_token_id", "pad_token_rows"]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS, else its UNK, else 0."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


@renamed_kwargs(pad_id="pad_token_id")
def pad_token_rows(
    rows: Sequence[Sequence[int]], pad_token_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """([batch, width] int64 ids, [batch, width] int64 attention mask), width = the longest row.

    Rows are padded with `pad_token_id` (see `pad_token_id(tokenizer)`). `left=True` right-aligns
    the rows (padding first), as batched generation wants; an empty row is all padding with a
    zero mask.
    """
    if not rows:
        raise ValueError("pad_token_rows: no rows")
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
