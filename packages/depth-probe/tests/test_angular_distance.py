import math

import pytest
import torch

from depth_probe import DepthCapture, angular_distance
from layerwise_core import tiny_llama


def test_rotation_by_a_fixed_angle_per_layer_gives_n_theta_over_pi(stream_from_hidden):
    # h_l = cos(l θ) e1 + sin(l θ) e2 (times a norm that grows): d(h_l, h_{l+n}) = n θ / π
    theta, num = math.pi / 10, 6
    e1, e2 = torch.zeros(8), torch.zeros(8)
    e1[0], e2[1] = 1.0, 1.0
    hidden = [
        ((1 + l) * (math.cos(l * theta) * e1 + math.sin(l * theta) * e2)).expand(2, 3, 8).clone()
        for l in range(num + 1)
    ]
    result = angular_distance(
        DepthCapture(stream_from_hidden(hidden), torch.ones(2, 3, dtype=torch.bool))
    )
    for n in range(1, num + 1):
        expected = torch.full((num - n + 1,), n * theta / math.pi)
        torch.testing.assert_close(result.matrix[n - 1, : num - n + 1], expected, atol=1e-6, rtol=0)
        assert torch.isnan(result.matrix[n - 1, num - n + 1 :]).all()


def test_identity_blocks_give_zero_distance_and_are_the_best_block(identity_blocks):
    model = identity_blocks(tiny_llama(num_hidden_layers=6), [2, 3, 4])
    result = angular_distance(model, torch.randint(0, 128, (3, 7)))
    assert result.matrix[2, 2].item() == 0.0  # d(h_2, h_5): blocks 2, 3, 4 are the identity
    assert result.best_block(3) == (2, 0.0)
    assert result.best_block(2)[1] == 0.0 and result.best_block(2)[0] in (2, 3)
    assert result.best_block(1)[1] == 0.0
    assert result.matrix[0, 0] > 1e-4
    with pytest.raises(ValueError):
        result.best_block(7)


def test_uses_each_rows_last_real_token_under_left_and_right_padding():
    model = tiny_llama(num_hidden_layers=3)
    seq = torch.randint(3, 128, (1, 5))
    alone = angular_distance(model, seq).matrix
    right = torch.cat([seq, torch.zeros(1, 2, dtype=torch.long)], 1)
    right_mask = torch.tensor([[1] * 5 + [0] * 2])
    torch.testing.assert_close(
        angular_distance(model, right, right_mask).matrix, alone, equal_nan=True
    )
    both = torch.cat([seq, seq], 0)
    torch.testing.assert_close(angular_distance(model, both).matrix, alone, equal_nan=True)


def test_as_dict_names_the_best_blocks():
    model = tiny_llama(num_hidden_layers=3)
    blocks = angular_distance(model, torch.randint(0, 128, (1, 4))).as_dict()["best_blocks"]
    assert set(blocks) == {"1", "2", "3"}
    assert blocks["3"]["layers"] == [0, 1, 2]
