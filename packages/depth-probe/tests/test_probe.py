import torch

import depth_probe as dp
from layerwise_core import tiny_llama


def test_every_single_pass_metric_of_a_12_layer_model_from_one_forward():
    model = tiny_llama(num_hidden_layers=12)
    ids = torch.randint(0, 128, (2, 10))
    mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        result = dp.probe(model, ids, mask, zero_channels=[3])
    finally:
        handle.remove()
    assert len(forwards) == 1
    capture = dp.capture_depth(model, ids, mask)
    torch.testing.assert_close(result.block_influence, dp.block_influence(capture))
    torch.testing.assert_close(
        result.angular_distance.matrix, dp.angular_distance(capture).matrix, equal_nan=True
    )
    torch.testing.assert_close(result.cka, dp.cka_matrix(capture))
    torch.testing.assert_close(result.logit_lens.kl, dp.logit_lens(capture).kl)
    torch.testing.assert_close(result.output_variance, dp.output_variance(capture))
    torch.testing.assert_close(
        result.similarity_zeroed["per_token"],
        dp.similarity_matrix(capture, variant="per_token", zero_channels=[3]),
    )
    torch.testing.assert_close(
        result.massive_activations.max_median_ratio,
        dp.massive_activations(capture).max_median_ratio,
    )
    assert result.num_layers == 12 and result.num_tokens == 17
    payload = result.as_dict()
    assert len(payload["block_influence"]) == 12
    assert len(payload["logit_lens"]["kl"]) == 13
    assert set(payload["similarity"]) == set(dp.SIMILARITY_VARIANTS)


def test_auto_zero_channel_is_the_top_outlier():
    model = tiny_llama(num_hidden_layers=3)
    result = dp.probe(model, torch.randint(0, 128, (1, 6)))
    assert result.zero_channels == result.massive_activations.outlier_channels(1)
