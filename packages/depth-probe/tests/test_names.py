"""One vocabulary (docs/architecture.md, "Names"): every function of depth-probe that runs a model
on token ids takes `input_ids` as a tensor (with `attention_mask=`) or as a batch mapping with
"input_ids" and "attention_mask", e.g. a tokenizer's output; both give identical results."""

import torch

import depth_probe as dp
from layerwise_core import tiny_llama


def batch():
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    return ids, mask, {"input_ids": ids, "attention_mask": mask, "labels": ids}


def same(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert a.as_dict() == b.as_dict()


def test_metrics_accept_a_batch_dict_like_a_tensor_and_mask():
    model = tiny_llama(num_hidden_layers=3)
    ids, mask, as_dict = batch()
    for metric in (
        dp.block_influence,
        dp.angular_distance,
        dp.cka_matrix,
        dp.similarity_matrix,
        dp.residual_contributions,
        dp.output_variance,
        dp.logit_lens,
        dp.massive_activations,
    ):
        same(metric(model, ids, mask), metric(model, as_dict))
    same(dp.probe(model, ids, mask), dp.probe(model, as_dict))
    a, b = dp.capture_depth(model, ids, mask), dp.capture_depth(model, as_dict)
    assert torch.equal(a.mask, b.mask) and not b.mask[1, :4].any()  # the dict's mask is used
    same(dp.skip_effect(model, ids, mask, layers=[1]), dp.skip_effect(model, as_dict, layers=[1]))
    # the mask matters, so the equalities above compare masked results
    assert not torch.allclose(dp.block_influence(model, ids), dp.block_influence(model, as_dict))


def test_scorers_and_generation_accept_a_batch_dict():
    model = tiny_llama(num_hidden_layers=2)
    ids, mask, as_dict = batch()
    assert dp.PerplexityScorer(ids, mask)(model) == dp.PerplexityScorer(as_dict)(model)
    torch.testing.assert_close(
        dp.greedy_generate(model, ids, mask, 3),
        dp.greedy_generate(model, as_dict, max_new_tokens=3),
    )


def test_collapse_metrics_accept_a_batch_dict():
    model = tiny_llama(num_hidden_layers=3)
    ids, mask, as_dict = batch()
    same(dp.channel_magnitudes(model, ids, mask), dp.channel_magnitudes(model, as_dict))
    same(dp.layer_similarities(model, ids, mask), dp.layer_similarities(model, as_dict))
