"""The last-number exact-match scorer by hand, and the batched greedy evaluation (left padding,
continuation slicing) with a stub model whose generations are known."""

from __future__ import annotations

import torch

from layerwise.eval.math_generation import evaluate_math_generation, last_number, math_exact_match


def test_last_number_by_hand():
    assert last_number("She has 3 + 5 = 8 apples. The answer is 8.") == 8.0
    assert last_number("It costs 1,234.5 dollars") == 1234.5
    assert last_number("down to -7") == -7.0
    assert last_number("no digits here") is None


def test_exact_match_tolerance():
    assert math_exact_match("The answer is 2.0004", "2")
    assert not math_exact_match("The answer is 2.002", "2")
    assert math_exact_match("... = 42", 42)
    assert not math_exact_match("I do not know", "42")


class _CharTokenizer:
    """One token per character; id 0 pads, id 1 ends a sequence."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) + 2 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 2) for i in ids if i > 1)


class _ScriptedModel(torch.nn.Module):
    """`generate` appends a scripted continuation chosen by the (unpadded) prompt."""

    def __init__(self, replies):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.replies = replies
        self.seen_masks = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        tok = _CharTokenizer()
        self.seen_masks.append(attention_mask.clone())
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tok.decode(ids[mask.bool()].tolist())
            reply = tok(self.replies[prompt])["input_ids"][:max_new_tokens]
            reply += [1] * (max_new_tokens - len(reply))
            rows.append(torch.cat([ids, torch.tensor(reply)]))
        return torch.stack(rows)


def test_batched_evaluation_scores_each_continuation():
    problems = [
        {"instruction": "1+1", "answer": "2"},
        {"instruction": "two times three", "answer": "6"},
        {"instruction": "10-4", "answer": "The answer is 6."},
    ]
    replies = {"Q:1+1": "= 2", "Q:two times three": "= 5", "Q:10-4": "10 - 4 = 6"}
    model = _ScriptedModel(replies)
    result = evaluate_math_generation(
        model, _CharTokenizer(), problems, lambda q: f"Q:{q}", max_new_tokens=12, batch_size=2
    )
    assert (result.correct, result.total) == (2, 3)
    assert [r["correct"] for r in result.records] == [True, False, True]
    assert [r["predicted"] for r in result.records] == [2.0, 5.0, 6.0]
    # prompts of one batch are left-padded: the mask ends with ones on every row
    assert all((m[:, -1] == 1).all() for m in model.seen_masks)
    assert (model.seen_masks[0][0, :2] == 0).all()  # "Q:1+1" is 10 chars shorter than the other
