"""Packing into blocks and the seeded, resumable block order."""

from __future__ import annotations

import pytest
import torch

from layerwise.data import BlockSampler, PackedBlocks, epoch_permutation, pack_documents


def test_pack_documents_joins_with_eos():
    stream = pack_documents([[5, 6, 7], [8], []], eos_id=0)
    assert stream.tolist() == [5, 6, 7, 0, 8, 0, 0]


def test_blocks_concatenate_back_to_the_stream(small_data):
    stream, T = small_data.train.stream, small_data.train.block_size
    blocks = PackedBlocks(stream, T)
    n = len(blocks)
    assert n == (len(stream) - 1) // T
    rebuilt = torch.cat([blocks[0]] + [blocks[i][1:] for i in range(1, n)])
    assert torch.equal(rebuilt, stream[: n * T + 1])
    assert all(torch.equal(blocks[i][-1], blocks[i + 1][0]) for i in range(n - 1))


def test_small_stream_by_hand():
    blocks = PackedBlocks(torch.arange(10), block_size=3)
    assert len(blocks) == 3  # 10 tokens -> targets 1..9 in 3 blocks of 3
    assert blocks.gather([2, 0]).tolist() == [[6, 7, 8, 9], [0, 1, 2, 3]]
    with pytest.raises(IndexError):
        blocks[3]


def test_epoch_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(1000, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(1000))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(epoch_permutation(1000, seed=3, epoch=0), a)
    assert not torch.equal(epoch_permutation(1000, seed=3, epoch=1), a)
    assert not torch.equal(epoch_permutation(1000, seed=4, epoch=0), a)


def test_sampler_resumes_exactly_and_drops_the_epoch_tail():
    straight = BlockSampler(10, seed=7)
    batches = [straight.next_indices(4) for _ in range(5)]  # 2 batches per epoch, 2 blocks skipped
    assert torch.equal(torch.cat(batches[:2]), epoch_permutation(10, 7, 0)[:8])
    assert torch.equal(torch.cat(batches[2:4]), epoch_permutation(10, 7, 1)[:8])
    assert straight.state_dict() == {"epoch": 2, "index": 4, "seed": 7}

    first = BlockSampler(10, seed=7)
    for _ in range(3):
        first.next_indices(4)
    resumed = BlockSampler(10, seed=7)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(resumed.next_indices(4), b) for b in batches[3:])
    with pytest.raises(ValueError, match="same train.seed"):
        BlockSampler(10, seed=8).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="exceeds the 10 blocks"):
        BlockSampler(10, seed=7).next_indices(11)
