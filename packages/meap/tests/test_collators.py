"""Collators vs the official training loop (masks, labels, loss), padding, resume, SFT."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from layerwise_core import tiny_llama
from meap import IGNORE_INDEX, MEAPCollator, MEAPSFTCollator

MASK = 127  # last id of the tiny models' vocabulary of 128, as in conftest.official_inputs


def blocks(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK, (n, length), generator=torch.Generator().manual_seed(seed))


def test_packed_blocks_follow_the_official_loop_with_accumulation(official_inputs):
    collator = MEAPCollator(MASK, mask_ratio=0.15, micro_batches_per_step=3)
    for call in range(40):
        data = blocks(4, 65, seed=call)  # T + 1 = 65 tokens per block
        batch = collator(data)  # a DataLoader over PackedBlocks yields such tensors
        step = call // 3
        assert torch.equal(batch["input_ids"][:, :64], official_inputs(data, 0.15, step))
        assert torch.equal(batch["input_ids"][:, 64], data[:, 64])
        assert torch.equal(batch["labels"], data)  # labels are the clean tokens
        assert bool(batch["attention_mask"].all())
    assert collator.step == 40 // 3


def test_hf_loss_on_collated_batch_equals_the_official_loss(official_inputs):
    model = tiny_llama(seed=0)
    data = blocks(3, 33, seed=1)
    batch = MEAPCollator(MASK, mask_ratio=0.2).__call__(
        [{"input_ids": row.tolist()} for row in data]
    )
    hf_loss = model(**batch).loss
    logits = model(official_inputs(data, 0.2, step=0)).logits  # official: model(input_ids)
    official = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
    torch.testing.assert_close(hf_loss, official, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "per_sequence"])
def test_padding_is_never_masked_and_never_a_label(mode):
    lengths = [40, 25, 12, 3, 2]
    features = [{"input_ids": list(range(1, n + 1))} for n in lengths]
    collator = MEAPCollator(MASK, mask_ratio=0.3, mode=mode, pad_token_id=0, pad_to_multiple_of=8)
    for _ in range(30):
        batch = collator(features)
        assert batch["input_ids"].shape == (5, 40)
        for b, n in enumerate(lengths):
            row = batch["input_ids"][b]
            assert torch.equal(batch["labels"][b, :n], torch.arange(1, n + 1))
            assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
            assert (row[n:] == 0).all() and (batch["attention_mask"][b, n:] == 0).all()
            # the last two real tokens (the last scored input and the unscored final token)
            assert (row[max(n - 2, 0) : n] != MASK).all()
            if mode == "per_sequence":
                assert int((row == MASK).sum()) == min(max(1, int((n - 1) * 0.3)), max(n - 2, 0))


def test_mixed_lengths_without_pad_id_name_the_fix():
    with pytest.raises(ValueError, match="pad_token_id"):
        MEAPCollator(MASK)([[1, 2, 3], [1, 2]])


def test_eval_mode_pads_without_masking_or_counting():
    collator = MEAPCollator(MASK, mask_ratio=0.5).eval()
    data = blocks(2, 20)
    batch = collator(data)
    assert torch.equal(batch["input_ids"], data) and collator.batches_seen == 0
    collator.train()
    assert (collator(data)["input_ids"] == MASK).any() and collator.batches_seen == 1


def test_resume_from_state_dict_continues_the_same_masks():
    straight = MEAPCollator(
        MASK, mask_ratio=0.15, mode="per_sequence", seed=3, micro_batches_per_step=2
    )
    outputs = [straight(blocks(2, 30, seed=i))["input_ids"] for i in range(9)]
    first = MEAPCollator(
        MASK, mask_ratio=0.15, mode="per_sequence", seed=3, micro_batches_per_step=2
    )
    for i in range(5):
        first(blocks(2, 30, seed=i))
    resumed = MEAPCollator(
        MASK, mask_ratio=0.15, mode="per_sequence", seed=3, micro_batches_per_step=2
    )
    resumed.load_state_dict(first.state_dict())
    for i in range(5, 9):
        assert torch.equal(resumed(blocks(2, 30, seed=i))["input_ids"], outputs[i])
    with pytest.raises(ValueError, match="gradient accumulation"):
        MEAPCollator(MASK, micro_batches_per_step=4).load_state_dict(first.state_dict())


def test_dataloader_workers_are_refused():
    loader = torch.utils.data.DataLoader(
        [list(range(10))] * 4, batch_size=2, collate_fn=MEAPCollator(MASK), num_workers=1
    )
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(loader))


def test_sft_collator_expands_long_answers_and_pads():
    collator = MEAPSFTCollator(MASK, pad_token_id=0, eos_token_id=2, min_answer_tokens=50)
    features = [
        {"prompt_ids": [5] * 4, "answer_ids": list(range(10, 70))},  # 60 > 50: duplicated
        {"prompt_ids": [6] * 3, "answer_ids": list(range(10, 20))},
        {"input_ids": [7, 8, 9], "labels": [IGNORE_INDEX, 8, 9]},  # already expanded
    ]
    batch = collator(features)
    assert batch["input_ids"].shape == (4, 65)
    assert batch["attention_mask"].sum(dim=1).tolist() == [65, 65, 14, 3]
    assert (batch["labels"][2, 14:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][3, 3:] == 0).all()
    assert int((batch["input_ids"][1] == MASK).sum()) == int(60 * 0.1)
    with pytest.raises(KeyError, match="prompt_ids"):
        collator([{"text": "hello"}])
