"""Pre-training learns, the schedule and perplexity match hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.eval import perplexity
from layerwise.train import build_model, pretrain, read_metrics, warmup_cosine
from layerwise_core import set_seed


def test_thirty_steps_beat_the_unigram_entropy(small_data, tmp_path, tiny_run):
    # H = -sum_v p(v) log p(v) over the training tokens: the best loss without context
    counts = torch.bincount(small_data.train.stream).double()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * p.log()).sum().item()
    assert 4.5 < unigram_entropy < 6.0

    cfg = tiny_run(
        tmp_path / "run",
        "train.steps=30",
        "train.batch_size=16",
        "optimizer.lr=1e-2",
        "model.overrides={hidden_size: 128, intermediate_size: 256}",
        "train.eval_batches=8",
    )
    result = pretrain(cfg, data=small_data)
    assert result.step == 30
    records = read_metrics(tmp_path / "run")
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[0] > math.log(512) - 0.2  # starts near uniform over the vocabulary
    assert result.final_eval.loss < unigram_entropy - 0.1
    assert result.final_eval.perplexity == pytest.approx(math.exp(result.final_eval.loss))
    assert result.final_eval.tokens == 8 * 16 * 64


def test_warmup_cosine_by_hand():
    W, S, r = 10, 110, 0.1
    assert warmup_cosine(0, W, S, r) == pytest.approx(0.1)
    assert warmup_cosine(4, W, S, r) == pytest.approx(0.5)
    assert warmup_cosine(W, W, S, r) == pytest.approx(1.0)
    assert warmup_cosine(W + 50, W, S, r) == pytest.approx((1 + r) / 2)  # half way: cos = 0
    assert warmup_cosine(S, W, S, r) == pytest.approx(r)
    assert warmup_cosine(5, 0, S, r) == pytest.approx(
        r + (1 - r) * (1 + math.cos(math.pi * 5 / S)) / 2
    )


def test_perplexity_matches_the_hf_loss(small_data, tiny_run):
    set_seed(0)
    cfg = tiny_run("unused").model
    model = build_model(cfg, len(small_data.tokenizer), 64).eval()
    result = perplexity(model, small_data.validation, batch_size=3, max_blocks=7)
    with torch.no_grad():  # HF shifts labels itself: an independent path to the same mean NLL
        losses = [
            model(
                input_ids=small_data.validation[i][None], labels=small_data.validation[i][None]
            ).loss
            for i in range(7)
        ]
    assert result.tokens == 7 * 64
    assert result.loss == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


def test_a_second_run_into_the_same_folder_is_refused(small_data, tmp_path, tiny_run):
    pretrain(tiny_run(tmp_path, "train.steps=1", "schedule.warmup_steps=0"), data=small_data)
    with pytest.raises(FileExistsError, match="train.resume=true"):
        pretrain(tiny_run(tmp_path, "train.steps=1", "schedule.warmup_steps=0"), data=small_data)
