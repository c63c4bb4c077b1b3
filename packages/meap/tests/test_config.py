"""MEAPConfig: defaults equal the collator's and the functions'; `masked_inputs` equals
`mask_inputs` / `masked_positions` (the masking layerwise's pre-training loop did by hand) in both
modes; slices of a global batch at their row offsets concatenate to the whole batch's masks (so 2
processes see what 1 sees); bad values are refused."""

import inspect
import itertools
import random

import pytest
import torch

from layerwise_core import ConfigError
from meap import MEAPCollator, MEAPConfig, mask_inputs, masked_positions

MASK = 999
MODES = ("reference", "per_sequence")


def blocks(rows=8, length=33, seed=0):
    return torch.randint(0, 500, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_defaults_equal_the_collator_and_the_functions():
    cfg = MEAPConfig()
    collator = inspect.signature(MEAPCollator.__init__).parameters
    assert cfg.mask_ratio == 0.15 == collator["mask_ratio"].default  # the 1B run's ratio
    assert cfg.mask_mode == "reference" == collator["mode"].default
    for function in (mask_inputs, masked_positions):
        assert inspect.signature(function).parameters["mode"].default == cfg.mask_mode


@pytest.mark.parametrize("step", [0, 7, 51, 130])
def test_reference_mode_is_the_official_draw(step):
    # random.seed(50 + step % 51); random.sample(range(0, T - 1), max(1, int(T * ratio)))
    x = blocks()
    length = x.shape[1]
    columns = random.Random(50 + step % 51).sample(range(length - 1), max(1, int(length * 0.15)))
    expected = x.clone()
    expected[:, columns] = MASK
    got = MEAPConfig().masked_inputs(x, MASK, step)
    assert torch.equal(got, expected)
    assert torch.equal(got, mask_inputs(x, 0.15, MASK, step))
    # rows, offsets and seeds do not matter: the same columns everywhere
    rows = MEAPConfig().masked_inputs(x[2:5], MASK, step, row_offset=2, global_batch=8, seed=3)
    assert torch.equal(rows, expected[2:5])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("step", [0, 3, 200])
def test_equals_the_masking_functions(mode, step):
    # what layerwise's _meap_loss did: the reference mask of the batch, or the per-sequence mask
    # of the global batch (seed = the run's seed) cut at the micro-batch's rows
    cfg = MEAPConfig(mask_ratio=0.2, mask_mode=mode)
    x = blocks(rows=3)
    got = cfg.masked_inputs(x, MASK, step, row_offset=4, global_batch=10, seed=5)
    if mode == "reference":
        expected = mask_inputs(x, 0.2, MASK, step)
    else:
        whole = torch.empty(10, x.shape[1], dtype=torch.long)
        mask = masked_positions(whole, 0.2, step, "per_sequence", seed=5)[4:7]
        expected = x.masked_fill(mask, MASK)
    assert torch.equal(got, expected)
    assert ((got == MASK).sum(dim=1) == int(x.shape[1] * 0.2)).all()  # floor(T * r) per row
    assert torch.equal(got[got != MASK], x[got != MASK])  # other positions untouched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("step", "seed"), [(0, 0), (9, 1), (77, 2)])
def test_slices_of_the_global_batch_concatenate_to_the_whole(mode, step, seed):
    cfg = MEAPConfig(mask_mode=mode)
    x = blocks(rows=8, seed=seed)
    whole = cfg.masked_inputs(x, MASK, step, seed=seed)
    # 2 processes x 2 micro-batches of 2 rows, and an uneven split
    for cuts in ([0, 2, 4, 6, 8], [0, 3, 8]):
        parts = [
            cfg.masked_inputs(x[lo:hi], MASK, step, row_offset=lo, global_batch=8, seed=seed)
            for lo, hi in itertools.pairwise(cuts)
        ]
        assert torch.equal(torch.cat(parts), whole)
    if mode == "per_sequence":
        # the test can fail: rows differ, and masking a slice as if it were a batch of its own
        # gives other masks than its rows of the global batch
        assert not torch.equal(whole[0] == MASK, whole[1] == MASK)
        alone = cfg.masked_inputs(x[4:8], MASK, step, seed=seed)
        assert not torch.equal(alone, whole[4:8])
        other_seed = cfg.masked_inputs(x, MASK, step, seed=seed + 1)
        assert not torch.equal(other_seed, whole)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mask_ratio": 0.0}, r"field 'mask_ratio'"),
        ({"mask_ratio": 1.0}, r"field 'mask_ratio'"),
        ({"mask_mode": "random"}, r"field 'mask_mode'.*'reference' or 'per_sequence'"),
        ({"ratio": 0.1}, r"unknown field 'ratio'"),
    ],
)
def test_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        MEAPConfig.from_dict(data)


def test_masked_inputs_errors():
    cfg = MEAPConfig(mask_mode="per_sequence")
    x = blocks(rows=4)
    with pytest.raises(ValueError, match=r"rows \[6, 10\) do not fit in a global batch of 8"):
        cfg.masked_inputs(x, MASK, 0, row_offset=6, global_batch=8)
    with pytest.raises(ValueError, match="do not fit"):
        cfg.masked_inputs(x, MASK, 0, row_offset=-1, global_batch=8)
    with pytest.raises(ValueError, match="unsqueeze"):
        cfg.masked_inputs(x[0], MASK, 0)
    with pytest.raises(ValueError, match="integer token ids"):
        cfg.masked_inputs(x.float(), MASK, 0)
    with pytest.raises(ValueError, match="add_mask_token"):
        cfg.masked_inputs(x, -1, 0)
