"""The NeuroTrails study's `ensemble` stage: combined / per-head losses, gain, disagreement, counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from layerwise.studies.analyses import AnalysisContext
from layerwise.studies.ensemble_stages import EnsembleStage, _Totals, nonzero_counts
from layerwise.studies.stages import ANALYSES


def _context(model, evaluation, run_dir, tokenizer=None) -> AnalysisContext:
    """An AR checkpoint's analysis context on `evaluation` windows, batches of 4."""
    return AnalysisContext(
        run_dir=run_dir,
        step=1,
        fraction=1.0,
        family="ar",
        calibration=evaluation[:, :-1],
        evaluation=evaluation,
        load_model=lambda: model,
        mask_token_id=None,
        mdm_t=[],
        mdm_copies=1,
        mask_seed=0,
        batch_size=4,
        tokenizer=tokenizer,
    )


def test_two_heads_on_one_token_by_hand():
    # head 1: logits (0, ln 2) -> p(0) = 1/3, argmax 1; head 2: (ln 3, 0) -> p(0) = 3/4, argmax 0
    heads = (
        torch.tensor([[[0.0, math.log(2.0)]]]),
        torch.tensor([[[math.log(3.0), 0.0]]]),
    )
    totals = _Totals()
    totals.add(heads, torch.tensor([[0]]))
    s = totals.summary()
    assert s["head_loss/0"] == pytest.approx(math.log(3.0))
    assert s["head_loss/1"] == pytest.approx(math.log(4.0 / 3.0))
    assert s["head_loss_mean"] == pytest.approx(math.log(2.0))
    # mean logits (ln3 / 2, ln2 / 2): p(0) = sqrt3 / (sqrt3 + sqrt2)
    assert s["loss"] == pytest.approx(math.log(1.0 + math.sqrt(2.0 / 3.0)))
    # mean probabilities: p(0) = (1/3 + 3/4) / 2 = 13/24
    assert s["loss_probs"] == pytest.approx(math.log(24.0 / 13.0))
    assert s["ensemble_gain"] == pytest.approx(math.log(2.0) - math.log(1.0 + math.sqrt(2 / 3)))
    assert s["disagreement"] == 1.0  # the one pair disagrees on the one token
    assert s["perplexity"] == pytest.approx(1.0 + math.sqrt(2.0 / 3.0))


def test_disagreement_is_the_off_diagonal_mean_over_pairs_and_tokens():
    # spec neurotrails.md §10.8: top-1 predictions [0, 1, 1] and [0, 1, 2] disagree on 1 of 3
    # tokens; with a third head equal to the first, pairs (1,2), (2,3) disagree once, (1,3) never
    def one_hot(tokens):
        return nn.functional.one_hot(torch.tensor([tokens]), 3).float() * 5.0

    totals = _Totals()
    totals.add((one_hot([0, 1, 1]), one_hot([0, 1, 2])), torch.tensor([[0, 1, 1]]))
    assert totals.summary()["disagreement"] == pytest.approx(1 / 3)
    three = _Totals()
    three.add(
        (one_hot([0, 1, 1]), one_hot([0, 1, 2]), one_hot([0, 1, 1])), torch.tensor([[0, 1, 1]])
    )
    assert three.summary()["disagreement"] == pytest.approx(2 / 9)


def test_token_weighting_over_batches_equals_one_batch():
    torch.manual_seed(0)
    heads = tuple(torch.randn(4, 5, 7) for _ in range(3))
    targets = torch.randint(0, 7, (4, 5))
    whole, split = _Totals(), _Totals()
    whole.add(heads, targets)
    split.add(tuple(h[:1] for h in heads), targets[:1])
    split.add(tuple(h[1:] for h in heads), targets[1:])
    for key, value in whole.summary().items():
        assert split.summary()[key] == pytest.approx(value, rel=1e-6), key


def test_nonzero_counts_by_hand():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3, bias=False), nn.LayerNorm(3))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].weight[0, :2] = 0.0  # 10 of 12 nonzero
    counts = nonzero_counts(model)
    assert counts["params"] == 40 + 12 + 6
    assert counts["nonzero_params"] == counts["params"] - 2 - 3  # LayerNorm bias starts at 0
    assert counts["inference_flops_per_token"] == 2 * 10


def test_one_head_model_through_the_registered_stage(tmp_path):
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    evaluation = torch.randint(0, 64, (6, 9))
    ctx = _context(model, evaluation, tmp_path)
    stage = ANALYSES["ensemble"].model_validate({"ood_windows": 0})
    assert isinstance(stage, EnsembleStage)
    with torch.no_grad():
        summary = stage.run(ctx)["summary"]
        logits = model(input_ids=evaluation[:, :-1]).logits
    expected = nn.functional.cross_entropy(logits.reshape(-1, 64), evaluation[:, 1:].reshape(-1))
    assert summary["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert summary["loss_probs"] == pytest.approx(expected.item(), rel=1e-5)
    assert summary["ensemble_gain"] == pytest.approx(0.0, abs=1e-6)
    assert summary["disagreement"] == 0.0
    assert "ood_loss" not in summary


def test_out_of_domain_windows_are_milton_tokenized_like_the_corpus(small_data, tmp_path):
    from layerwise.data.shakespeare import milton_texts

    tokenizer = small_data.tokenizer
    evaluation = small_data.validation.gather(range(4))  # [4, 65]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ctx = _context(model, evaluation, tmp_path, tokenizer)
    stage = EnsembleStage(ood_windows=3)
    windows = stage._ood_windows(ctx)
    text = "\n\n".join(t.text for t in milton_texts())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert torch.equal(windows, torch.tensor(ids[: 3 * 65]).view(3, 65))
    with torch.no_grad():
        summary = stage.run(ctx)["summary"]
        logits = model(input_ids=windows[:, :-1]).logits
    expected = nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)
    )
    assert summary["ood_loss"] == pytest.approx(expected.item(), rel=1e-5)
    # windows longer than the text: no out-of-domain metrics rather than a division by zero
    ctx.evaluation = torch.zeros(1, len(ids) + 1, dtype=torch.long)
    assert len(stage._ood_windows(ctx)) == 0
