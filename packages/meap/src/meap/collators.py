"""Collators: MEAP for HF `Trainer` and plain `DataLoader`s, packed blocks or padded batches.

Both return Hugging Face causal-LM batches `{"input_ids", "attention_mask", "labels"}`; the model
shifts the labels itself (the logit at position j-1 scores `labels[j]`), padding is -100.

`MEAPCollator` (pre-training, arXiv 2502.07490 Sec. 3.1): `labels` are the clean tokens and
`input_ids` carry [MASK] at the drawn positions. The official loop feeds T inputs and scores T
targets from a block of T + 1 tokens; a Hugging Face row of L = T + 1 tokens scores the same T
targets from the same first T inputs (the last token's logit is dropped by the shift). So the mask
is drawn on the *scored* inputs of each row (its real tokens but the last one): a packed batch of
(T + 1)-token blocks in `mode="reference"` gets exactly the official mask of block size T.

The mask depends on the optimizer step. The collator counts the training batches it collates:
`step = batches_seen // micro_batches_per_step` (set this to your gradient accumulation), so it
must run in the training process (`num_workers=0`; masking costs well under 1% of a step).
`state_dict()` / `load_state_dict()` or `set_step()` restore it on resume; `eval()` pads without
masking or counting (validation is unmasked), `train()` turns masking back on. With HF `Trainer`,
add `meap.MEAPTrainerCallback(collator)`, which does all of this from the trainer's state.

`MEAPSFTCollator` (SFT, Sec. 3.2): expands `{"prompt_ids", "answer_ids"}` features with
`meap.sft_examples` (the normal example, plus the masked duplicate for long answers) and pads;
features that already hold `input_ids` / `labels` are only padded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from layerwise_core import renamed_kwargs, warn_renamed
from meap.input_masking import MaskMode, masked_positions
from meap.sft import sft_examples

__all__ = ["IGNORE_INDEX", "MEAPCollator", "MEAPSFTCollator", "pad_batch"]

IGNORE_INDEX = -100  # cross-entropy ignore_index of Hugging Face causal LMs


def _as_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return _as_tensor(ids).tolist()
    return [int(i) for i in ids]


def _as_tensor(ids: Any) -> torch.Tensor:
    tensor = torch.as_tensor(ids, dtype=torch.long)
    if tensor.dim() != 1:
        raise ValueError(f"each sequence must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor


def pad_batch(
    rows: Sequence[Mapping[str, Any]],
    pad_token_id: int | None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad rows of `input_ids` (+ optional `labels`, `attention_mask`) into tensors.

    Missing labels default to the input ids where the attention mask is 1; padded positions get
    `pad_token_id`, label -100 and attention 0.
    """
    ids = [_as_tensor(row["input_ids"]) for row in rows]
    lengths = [len(x) for x in ids]
    if not ids or min(lengths) == 0:
        raise ValueError("cannot collate an empty batch or an empty sequence")
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    if width != min(lengths) and pad_token_id is None:
        raise ValueError(
            f"sequences of lengths {min(lengths)}..{max(lengths)} need padding: pass "
            "pad_token_id=tokenizer.pad_token_id (or the EOS id) to the collator"
        )
    pad = 0 if pad_token_id is None else pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.long)
    labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    for b, (row, x) in enumerate(zip(rows, ids)):
        n = len(x)
        input_ids[b, :n] = x
        given = row.get("attention_mask")
        attention[b, :n] = 1 if given is None else _as_tensor(given)
        if row.get("labels") is None:
            labels[b, :n] = x.masked_fill(attention[b, :n] == 0, IGNORE_INDEX)
        else:
            row_labels = _as_tensor(row["labels"])
            if len(row_labels) != n:
                raise ValueError(f"row {b}: {len(row_labels)} labels for {n} input ids")
            labels[b, :n] = row_labels
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _rows(features: Any) -> list[Mapping[str, Any]]:
    """Features as a list of dicts: dicts, token-id lists, 1-D tensors, or one 2-D tensor."""
    if isinstance(features, torch.Tensor):
        if features.dim() != 2:
            raise ValueError(f"a tensor batch must be (batch, length), got {tuple(features.shape)}")
        return [{"input_ids": row} for row in features]
    return [f if isinstance(f, Mapping) else {"input_ids": f} for f in features]


class MEAPCollator:
    """Pad, label with the clean tokens, and mask MEAP's input positions (see module docstring).

    Args:
        mask_token_id: id of [MASK] (`meap.add_mask_token` adds it and returns it).
        mask_ratio: fraction r of the scored inputs replaced by [MASK] (paper default 0.15 for 1B).
        mode: "reference" (official column-shared cycling masks) or "per_sequence".
        pad_token_id: pad id for batches of unequal lengths (never masked, label -100).
        seed: seeds the per-sequence draws together with the step.
        micro_batches_per_step: batches per optimizer step (gradient accumulation).
        pad_to_multiple_of: round the padded length up (e.g. 8 for tensor cores).
    """

    @renamed_kwargs(ratio="mask_ratio")
    def __init__(
        self,
        mask_token_id: int,
        mask_ratio: float = 0.15,
        mode: MaskMode = "reference",
        *,
        pad_token_id: int | None = None,
        seed: int = 0,
        micro_batches_per_step: int = 1,
        pad_to_multiple_of: int | None = None,
    ):
        if not isinstance(mask_token_id, int) or mask_token_id < 0:
            raise ValueError(
                f"mask_token_id must be a token id >= 0, got {mask_token_id!r}; "
                "meap.add_mask_token(tokenizer, model) adds [MASK] and returns its id"
            )
        if mode not in ("reference", "per_sequence"):
            raise ValueError(f"unknown MEAP mask mode {mode!r}; use 'reference' or 'per_sequence'")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if micro_batches_per_step < 1:
            raise ValueError(f"micro_batches_per_step must be >= 1, got {micro_batches_per_step}")
        self.mask_token_id = mask_token_id
        self.mask_ratio = mask_ratio
        self.mode: MaskMode = mode
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.micro_batches_per_step = micro_batches_per_step
        self.pad_to_multiple_of = pad_to_multiple_of
        self.batches_seen = 0  # training batches collated so far
        self.training = True

    @property
    def ratio(self) -> float:
        """Deprecated alias of `mask_ratio` (removed in the next release)."""
        warn_renamed("MEAPCollator", "ratio", "mask_ratio", kind="attribute")
        return self.mask_ratio

    @property
    def step(self) -> int:
        """The optimizer step the next training batch belongs to."""
        return self.batches_seen // self.micro_batches_per_step

    def set_step(self, step: int) -> None:
        """Position the collator at the first micro-batch of optimizer step `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.batches_seen = step * self.micro_batches_per_step

    def train(self, mode: bool = True) -> MEAPCollator:
        self.training = mode
        return self

    def eval(self) -> MEAPCollator:
        return self.train(False)

    def state_dict(self) -> dict[str, int]:
        return {
            "batches_seen": self.batches_seen,
            "micro_batches_per_step": self.micro_batches_per_step,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["micro_batches_per_step"] != self.micro_batches_per_step:
            raise ValueError(
                f"the checkpoint counted {state['micro_batches_per_step']} micro-batches per step, "
                f"this collator {self.micro_batches_per_step}: resume with the same gradient "
                "accumulation, or call set_step(optimizer_step)"
            )
        self.batches_seen = int(state["batches_seen"])

    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        batch = pad_batch(_rows(features), self.pad_token_id, self.pad_to_multiple_of)
        if not self.training:
            return batch
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(
                "MEAPCollator counts optimizer steps, which DataLoader worker processes cannot "
                "see: use num_workers=0 (masking costs <1% of a step), or call meap.mask_inputs "
                "with the step in the training loop"
            )
        real = batch["attention_mask"].bool()
        # scored inputs: real tokens followed by a real token (the last one's logit is unused)
        scored = real[:, :-1] & real[:, 1:]
        mask = masked_positions(
            batch["input_ids"][:, :-1],
            self.mask_ratio,
            self.step,
            self.mode,
            attention_mask=scored,
            seed=self.seed,
        )
        batch["input_ids"][:, :-1].masked_fill_(mask, self.mask_token_id)
        self.batches_seen += 1
        return batch


class MEAPSFTCollator:
    """Expand prompt/answer features into MEAP SFT examples and pad them (Sec. 3.2).

    Features `{"prompt_ids", "answer_ids"}` go through `meap.sft_examples` (a batch of n features
    becomes n + (number of answers longer than `min_answer_tokens`) rows); features with
    `input_ids` (and `labels`) are padded as they are, e.g. after `datasets.map(sft_examples)`.
    """

    def __init__(
        self,
        mask_token_id: int,
        pad_token_id: int,
        *,
        eos_token_id: int | None = None,
        mask_ratio: float = 0.1,
        min_answer_tokens: int = 50,
        max_length: int | None = None,
        seed: int = 0,
        pad_to_multiple_of: int | None = None,
    ):
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.mask_ratio = mask_ratio
        self.min_answer_tokens = min_answer_tokens
        self.max_length = max_length
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[Mapping[str, Any]] = []
        for feature in features:
            if "input_ids" in feature:
                rows.append(feature)
                continue
            if "prompt_ids" not in feature or "answer_ids" not in feature:
                raise KeyError(
                    "MEAPSFTCollator needs features with 'prompt_ids' and 'answer_ids' (token-id "
                    f"lists) or with 'input_ids' and 'labels'; got keys {sorted(feature)}"
                )
            rows += sft_examples(
                _as_list(feature["prompt_ids"]),
                _as_list(feature["answer_ids"]),
                self.mask_ratio,
                self.min_answer_tokens,
                mask_token_id=self.mask_token_id,
                eos_token_id=self.eos_token_id,
                max_length=self.max_length,
                seed=self.seed,
            )
        if not rows:
            raise ValueError(
                "no SFT example left: every answer was truncated away (raise max_length)"
            )
        return pad_batch(rows, self.pad_token_id, self.pad_to_multiple_of)
