import math

import pytest
import torch
from torch.nn import functional as F

from depth_probe import (
    ExactMatchScorer,
    MultipleChoiceItem,
    MultipleChoiceScorer,
    PerplexityScorer,
    greedy_generate,
    is_masked_diffusion,
)
from layerwise_core import tiny_bidirectional, tiny_llama, tiny_shifted_bidirectional


def test_perplexity_equals_exp_of_the_hf_loss_and_ignores_padding():
    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (3, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 8])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        # HF's loss averages over all non-ignored targets of the batch
        loss = model(ids, attention_mask=mask, labels=labels).loss
    scorer = PerplexityScorer(ids, mask, batch_size=2)  # batches cut the rows 2 + 1
    assert scorer(model) == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert scorer.protocol == "likelihood" and not scorer.higher_is_better


@pytest.mark.parametrize("builder", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_masked_diffusion_perplexity_scores_a_fixed_masked_subset(builder):
    model = builder(num_hidden_layers=2)
    assert is_masked_diffusion(model)
    ids = torch.randint(0, 120, (2, 10))
    scorer = PerplexityScorer(ids, mask_ratio=0.4, seed=3)
    chosen = scorer._diffusion_mask
    assert 0 < chosen.sum() < ids.numel()
    shift = model.config.logit_shift
    inputs = ids.masked_fill(chosen, model.config.mask_token_id)
    with torch.no_grad():
        logp = F.log_softmax(model(inputs).logits, -1)
    nll, count = 0.0, 0
    for b in range(2):
        for t in range(10):
            if chosen[b, t] and t - shift >= 0:
                nll -= logp[b, t - shift, ids[b, t]].item()
                count += 1
    assert scorer(model) == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert scorer(model) == scorer(model)  # the same subset every call


@pytest.mark.parametrize("share_prefix", [True, False])
def test_multiple_choice_picks_the_choice_of_highest_summed_log_likelihood(tokenizer, share_prefix):
    model = tiny_llama(num_hidden_layers=2)
    items = [
        MultipleChoiceItem("the cat sat on", (" the mat", " a dog"), 0),
        ("1 plus 2 is", (" 3", " 4", " 5 6"), 2),
        ("3", (" plus 4 is", " 7"), 1),  # contexts of different lengths: left padding
    ]
    scorer = MultipleChoiceScorer(tokenizer, items, batch_size=9, share_prefix=share_prefix)
    scores = scorer.choice_loglikelihoods(model)
    for (context, choices, _), row in zip(
        [(i.context, i.choices, i.answer) for i in scorer.items], scores
    ):
        ctx = tokenizer(context)["input_ids"]
        for choice, value in zip(choices, row):
            cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
            full = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = F.log_softmax(model(full).logits[0], -1)
            expected = sum(logp[len(ctx) + k - 1, tok].item() for k, tok in enumerate(cont))
            assert value == pytest.approx(expected, abs=1e-5)
    predicted = [max(range(len(r)), key=r.__getitem__) for r in scores]
    expected_acc = sum(p == i.answer for p, i in zip(predicted, scorer.items)) / 3
    assert scorer(model) == expected_acc


def _greedy_loop(model, ids, steps):
    out = ids
    with torch.no_grad():
        for _ in range(steps):
            out = torch.cat([out, model(out, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    return out[:, ids.shape[1] :]


def test_exact_match_against_the_models_own_greedy_answers(tokenizer):
    model = tiny_llama(num_hidden_layers=2, vocab_size=40)
    prompts = ["1 plus 2 is", "the cat sat on the", "3"]
    answers = []
    for prompt in prompts:  # independent greedy loop, no cache, no padding
        new = _greedy_loop(model, torch.tensor([tokenizer(prompt)["input_ids"]]), 3)
        answers.append(tokenizer.decode(new[0], skip_special_tokens=True))
    scorer = ExactMatchScorer(tokenizer, prompts, answers, max_new_tokens=3, batch_size=2)
    assert scorer(model) == 1.0  # left-padded batched generate agrees with the loop
    assert scorer.last_outputs == answers
    wrong = ExactMatchScorer(tokenizer, prompts, ["mat"] * 3, max_new_tokens=3)
    assert wrong(model) == sum(a.split("\n")[0].strip() == "mat" for a in answers) / 3
    assert scorer.protocol == "generation"


def test_masked_diffusion_greedy_unmasks_the_most_confident_position_first():
    model = tiny_bidirectional(num_hidden_layers=2)
    mask_id = model.config.mask_token_id
    ids = torch.randint(0, 100, (2, 4))
    attention = torch.ones_like(ids)
    one = greedy_generate(model, ids, attention, 1)
    with torch.no_grad():
        logits = model(torch.cat([ids, torch.full((2, 1), mask_id)], 1)).logits
    assert one[:, 0].tolist() == logits[:, -1].argmax(-1).tolist()
    # two tokens: the first filled is the one of highest max-probability
    two = greedy_generate(model, ids, attention, 2)
    with torch.no_grad():
        probs = model(torch.cat([ids, torch.full((2, 2), mask_id)], 1)).logits.softmax(-1)
    for b in range(2):
        conf, tok = probs[b, -2:].max(-1)
        first = int(conf.argmax())
        assert two[b, first].item() == tok[first].item()
    assert (two != mask_id).all()
