import pytest
import torch

from layerwise_core import pad_token_id, pad_token_rows


def test_right_and_left_padding_by_hand():
    rows = [[5, 6, 7], [8], []]
    ids, mask = pad_token_rows(rows, pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_token_rows(rows, pad_token_id=9, left=True)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="no rows"):
        pad_token_rows([], 0)


def test_pad_id_falls_back_from_pad_to_eos_to_unk_to_zero():
    class Tok:
        def __init__(self, pad=None, eos=None, unk=None):
            self.pad_token_id, self.eos_token_id, self.unk_token_id = pad, eos, unk

    assert pad_token_id(Tok(1, 2, 3)) == 1
    assert pad_token_id(Tok(None, 2, 3)) == 2
    assert pad_token_id(Tok(None, None, 3)) == 3
    assert pad_token_id(Tok()) == 0


def test_deprecated_pad_id_warns_and_pads_the_same():
    rows = [[5, 6, 7], [8]]
    with pytest.warns(FutureWarning, match="`pad_id` is deprecated.*use `pad_token_id`"):
        old = pad_token_rows(rows, pad_id=9, left=True)
    new = pad_token_rows(rows, pad_token_id=9, left=True)
    assert all(torch.equal(a, b) for a, b in zip(old, new))
