"""MEAP supervised fine-tuning examples: the normal example, plus a masked duplicate for long answers.

Zhuang et al., arXiv 2502.07490, Sec. 3.2, as implemented by the official `preprocess_function`
(scitix/MEAP, `MEAP-SFT/MEAP-SFT.py`). For a prompt p (length P) and an answer a (length A):

1. normal:  input  = p + a + [eos]
            labels = [-100] * P + a + [eos]                  (the model shifts them itself)
2. only if A > min_answer_tokens (50): a separate duplicate with
            S      = the answer span [P, E), E = P + A (or min(P + A, max_length - 1))
            M      = k positions sampled from S without replacement, k = max(1, floor(|S| * r))
            input  = (p + a)[:E] with input[m] = [MASK] for m in M, then [eos]
            labels = -100 everywhere except labels[m] = (p + a)[m] for m in M

   Under the causal shift the logit at m-1 predicts the clean token hidden at m: a masked-token
   loss on the answer only, in a sequence whose answer has holes. The duplicate is its own example
   (not concatenated with the normal one); attention covers every token. Default r = 0.1.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

__all__ = ["sft_examples"]

_IGNORE = -100


def _example_rng(seed: int, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> random.Random:
    # deterministic per (seed, example content): the same duplicate in every process and epoch
    digest = hashlib.sha256(
        f"meap-sft\x00{seed}\x00{list(prompt_ids)}\x00{list(answer_ids)}".encode()
    )
    return random.Random(digest.digest())


def sft_examples(
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    mask_ratio: float = 0.1,
    min_answer_tokens: int = 50,
    *,
    mask_token_id: int,
    eos_token_id: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
) -> list[dict[str, list[int]]]:
    """MEAP SFT examples of one prompt/answer pair: `[normal]` or `[normal, masked duplicate]`.

    Plain token-id lists in, nothing prepended (tokenize the prompt with its BOS/template first);
    `eos_token_id` is appended when given, with label eos in the normal example and -100 in the
    duplicate. The duplicate exists when `len(answer_ids) > min_answer_tokens` (strictly, as the
    official `len(target_ids) > 50`). `max_length` truncates like the official code: the normal
    input to `max_length - 1` tokens + eos, its labels to `max_length`; the duplicate's span ends
    at `max_length - 1`. Positions come from a `random.Random` seeded by `seed` and the example's
    tokens (the official code uses the unseeded global `random.sample`). Examples whose labels are
    all -100 are dropped, as the official `filter_empty_labels` does.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}; the paper uses 0.1")
    if min_answer_tokens < 0:
        raise ValueError(f"min_answer_tokens must be >= 0, got {min_answer_tokens}")
    if not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(
            f"mask_token_id must be a token id >= 0, got {mask_token_id!r}; "
            "meap.add_mask_token(tokenizer, model) adds [MASK] and returns its id"
        )
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    prompt, answer = [int(t) for t in prompt_ids], [int(t) for t in answer_ids]
    eos = [] if eos_token_id is None else [eos_token_id]
    full = prompt + answer

    input_ids = full + eos
    labels = [_IGNORE] * len(prompt) + answer + eos
    if max_length is not None and len(input_ids) > max_length:
        # official: input_sequence[:max_length-1] + [eos]; labels[:max_length]
        input_ids = input_ids[: max_length - len(eos)] + eos
        labels = labels[:max_length]
    examples = []
    if any(label != _IGNORE for label in labels):
        examples.append({"input_ids": input_ids, "labels": labels})

    if len(answer) > min_answer_tokens:
        start = len(prompt)
        end = len(full) if max_length is None else min(len(full), max_length - 1)
        if end > start:  # the official code would fail in random.sample on an empty span
            count = max(1, int((end - start) * mask_ratio))
            positions = _example_rng(seed, prompt, answer).sample(range(start, end), count)
            masked = full[:end]
            masked_labels = [_IGNORE] * end
            for pos in positions:
                masked[pos] = mask_token_id
                masked_labels[pos] = full[pos]
            examples.append(
                {"input_ids": masked + eos, "labels": masked_labels + [_IGNORE] * len(eos)}
            )
    return examples
