import pytest
import torch

from depth_probe import DepthCapture, capture_depth, massive_activations
from layerwise_core import tiny_llama


def test_a_planted_channel_is_found_with_the_known_max_to_median_ratio(stream_from_hidden):
    hidden = [torch.ones(2, 3, 9) for _ in range(4)]
    attn_inputs = [torch.ones(2, 3, 9) * (-1) ** l for l in range(3)]
    attn_inputs[1][..., 4] = -250.0  # |x| = 250 in channel 4, 1 elsewhere
    capture = DepthCapture(
        stream_from_hidden(hidden), torch.ones(2, 3, dtype=torch.bool), attn_inputs=attn_inputs
    )
    result = massive_activations(capture, top_k=2)
    torch.testing.assert_close(result.max_median_ratio, torch.tensor([1.0, 250.0, 1.0]))
    assert result.top_channels[1, 0].item() == 4
    assert result.outlier_channels(1) == [4]
    assert result.max_abs.tolist() == [1.0, 250.0, 1.0]
    assert result.as_dict()["top_channel_over_median_channel"][1] == pytest.approx(250.0)


def test_padding_is_left_out_and_residual_site_reads_block_inputs():
    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (2, 4))
    mask = torch.tensor([[1] * 4, [1] + [0] * 3])
    capture = capture_depth(model, ids, mask)
    result = massive_activations(capture)
    x = capture.attn_inputs[1][mask.bool()].abs()
    torch.testing.assert_close(result.channel_magnitude[1], x.mean(0))
    expected = (x.amax(-1) / x.median(-1).values).mean()
    assert result.max_median_ratio[1].item() == pytest.approx(expected.item(), rel=1e-6)
    residual = massive_activations(capture, site="residual")
    torch.testing.assert_close(
        residual.channel_magnitude[0], capture.hidden_states[0][mask.bool()].abs().mean(0)
    )
