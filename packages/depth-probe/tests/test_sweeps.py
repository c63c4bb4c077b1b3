import copy

import pytest
import torch

import depth_probe
from depth_probe import (
    ExactMatchScorer,
    PerplexityScorer,
    contiguous_block_removals,
    contiguous_block_sweep,
    lowest_influence_removals,
    lowest_influence_sweep,
    remove_layers,
    single_layer_sweep,
    sweep,
)
from layerwise_core import tiny_bidirectional, tiny_llama


def test_single_layer_sweep_equals_the_naive_copy_and_remove_loop(tokenizer, monkeypatch):
    model = tiny_llama(num_hidden_layers=4, vocab_size=40)
    ids = torch.randint(0, 40, (3, 9))
    ppl = PerplexityScorer(ids)
    em = ExactMatchScorer(tokenizer, ["1 plus 2 is", "the cat"], ["3", "sat"], max_new_tokens=2)
    naive = []
    for layer in range(4):  # the baseline: a deep copy per candidate
        pruned = remove_layers(copy.deepcopy(model), [layer])
        naive.append((ppl(pruned), em(pruned)))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    real_deepcopy = copy.deepcopy

    def no_copies(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("the sweep copied the model")
        return real_deepcopy(obj, *args, **kwargs)  # e.g. generate() copies its GenerationConfig

    monkeypatch.setattr(copy, "deepcopy", no_copies)
    result = single_layer_sweep(model, [ppl, em])
    assert result.removals == [(0,), (1,), (2,), (3,)]
    assert result.scores["perplexity"] == pytest.approx([n[0] for n in naive], rel=1e-6)
    assert result.scores["exact_match"] == [n[1] for n in naive]
    assert result.baseline["perplexity"] == pytest.approx(ppl(model))
    assert result.protocols == {"perplexity": "likelihood", "exact_match": "generation"}
    for key, value in model.state_dict().items():  # the model is back as it was
        assert torch.equal(value, state[key])
    assert len(model.model.layers) == 4
    assert result.delta("perplexity")[0] == pytest.approx(naive[0][0] - ppl(model))


def test_candidate_sets():
    assert contiguous_block_removals(5, 2) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert lowest_influence_removals([0.3, 0.1, 0.2, 0.9], [1, 2, 3]) == [(1,), (1, 2), (0, 1, 2)]
    with pytest.raises(ValueError):
        contiguous_block_removals(3, 3)


def test_block_and_lowest_influence_sweeps_on_a_masked_diffusion_model():
    model = tiny_bidirectional(num_hidden_layers=4)
    ids = torch.randint(0, 120, (2, 8))
    scorers = {"ppl": PerplexityScorer(ids)}
    blocks = contiguous_block_sweep(model, scorers, 2)
    assert blocks.kind == "contiguous_2" and len(blocks.removals) == 3
    influence = depth_probe.block_influence(model, ids)
    lowest = lowest_influence_sweep(model, scorers, influence, [1, 3])
    expected = PerplexityScorer(ids)(
        remove_layers(copy.deepcopy(model), depth_probe.lowest_influence_layers(influence, 3))
    )
    assert lowest.scores["ppl"][1] == pytest.approx(expected, rel=1e-6)
    table = lowest.table()
    assert table.splitlines()[2].startswith("| none |")
    assert len(table.splitlines()) == 5


def test_sweep_restores_training_mode_and_rejects_duplicate_names():
    model = tiny_llama(num_hidden_layers=2).train()
    ids = torch.randint(0, 128, (1, 5))
    sweep(model, {"a": PerplexityScorer(ids)}, [(0,)])
    assert model.training
    with pytest.raises(ValueError, match="named"):
        sweep(model, [PerplexityScorer(ids), PerplexityScorer(ids)], [(0,)])
