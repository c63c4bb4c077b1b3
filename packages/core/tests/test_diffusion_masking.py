"""masked_copies: the draws written out by hand, the order of rows, the maskable restriction."""

import torch

from layerwise_core import masked_copies


def test_rows_follow_the_hand_written_draws():
    ids = torch.arange(1, 13).reshape(2, 6)
    got = masked_copies(ids, mask_token_id=99, copies=3, seed=5)
    g = torch.Generator().manual_seed(5)
    expected = []
    for n in range(2):
        for _ in range(3):
            t = torch.rand(1, generator=g)
            u = torch.rand(6, generator=g)
            expected.append(torch.where(u < t, torch.tensor(99), ids[n]))
    assert torch.equal(got, torch.stack(expected))
    # copies of one window are adjacent: unmasked tokens come from the right window
    for row in range(6):
        keep = got[row] != 99
        assert torch.equal(got[row][keep], ids[row // 3][keep])


def test_masking_rate_is_uniform_t_on_average_and_maskable_is_respected():
    ids = torch.zeros(400, 50, dtype=torch.long)
    got = masked_copies(ids, 7, copies=1, seed=0)
    assert abs((got == 7).float().mean().item() - 0.5) < 0.03  # E[t] = 1/2
    maskable = torch.zeros(400, 50, dtype=torch.bool)
    maskable[:, 10:] = True
    restricted = masked_copies(ids, 7, copies=1, seed=0, maskable=maskable)
    assert not (restricted[:, :10] == 7).any()
    assert torch.equal(restricted[:, 10:], got[:, 10:])  # same draws with or without it
