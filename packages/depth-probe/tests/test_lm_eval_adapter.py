import sys
import types

import pytest
import torch

from depth_probe import LmEvalScorer, evaluate_with_lm_eval, single_layer_sweep
from layerwise_core import tiny_llama


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """A stand-in for lm-evaluation-harness recording what it was handed."""
    seen = []

    class HFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            self.model = pretrained
            self.layers = len(pretrained.model.layers)
            self.layer_idx = [b.self_attn.layer_idx for b in pretrained.model.layers]

    def simple_evaluate(model, tasks, **kwargs):
        seen.append(
            {"layers": model.layers, "layer_idx": model.layer_idx, "tasks": tasks, **kwargs}
        )
        return {"results": {t: {"acc,none": model.layers / 10} for t in tasks}}

    package = types.ModuleType("lm_eval")
    package.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = HFLM
    package.models = models
    models.huggingface = huggingface
    monkeypatch.setitem(sys.modules, "lm_eval", package)
    monkeypatch.setitem(sys.modules, "lm_eval.models", models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", huggingface)
    return seen


def test_hands_the_pruned_model_to_simple_evaluate_and_restores_it(fake_lm_eval, tokenizer):
    model = tiny_llama(num_hidden_layers=4)
    results = evaluate_with_lm_eval(model, tokenizer, ["arc_easy"], remove=[0, 2], limit=5)
    assert fake_lm_eval == [{"layers": 2, "layer_idx": [0, 1], "tasks": ["arc_easy"], "limit": 5}]
    assert results["results"]["arc_easy"]["acc,none"] == 0.2
    assert len(model.model.layers) == 4


def test_as_a_sweep_scorer(fake_lm_eval, tokenizer):
    model = tiny_llama(num_hidden_layers=3)
    scorer = LmEvalScorer(tokenizer, "gsm8k", protocol="generation", limit=2)
    result = single_layer_sweep(model, [scorer])
    assert result.baseline == {"gsm8k:acc,none": pytest.approx(0.3)}
    assert result.scores["gsm8k:acc,none"] == pytest.approx([0.2, 0.2, 0.2])
    assert result.protocols == {"gsm8k:acc,none": "generation"}


def test_without_lm_eval_the_error_names_the_extra(monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"depth-probe\[lm-eval\]"):
        evaluate_with_lm_eval(tiny_llama(), tokenizer, ["arc_easy"])
    assert torch.__version__  # the import guard does not touch anything else
