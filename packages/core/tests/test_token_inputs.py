"""token_inputs: a tensor (+ mask) and a batch mapping give the same (input_ids, attention_mask)."""

import pytest
import torch

from layerwise_core import capture_residual_stream, tiny_llama, token_inputs


def test_tensor_and_mapping_forms():
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert token_inputs(ids) == (ids, None)
    assert token_inputs(ids, mask) == (ids, mask)
    got = token_inputs({"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert got[0] is ids and got[1] is mask
    got = token_inputs({"input_ids": ids}, mask)  # the mask may come separately
    assert got[0] is ids and got[1] is mask
    assert token_inputs(None) == (None, None)


def test_errors_name_the_fix():
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="probe: a batch mapping needs an 'input_ids'"):
        token_inputs({"ids": ids}, what="probe")
    with pytest.raises(ValueError, match="already holds an 'attention_mask'"):
        token_inputs({"input_ids": ids, "attention_mask": ids}, torch.ones_like(ids))
    with pytest.raises(TypeError, match="return_tensors='pt'"):
        token_inputs({"input_ids": [[1, 2]]})


def test_batch_encoding_is_a_mapping():
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[1, 2, 3]])
    encoding = transformers.BatchEncoding(
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    )
    got = token_inputs(encoding)
    assert got[0] is ids and torch.equal(got[1], torch.ones_like(ids))


def test_capture_residual_stream_takes_a_batch_dict():
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (2, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    a = capture_residual_stream(model, ids, mask, positions="last")
    b = capture_residual_stream(model, {"input_ids": ids, "attention_mask": mask}, positions="last")
    for x, y in zip(a.outputs, b.outputs):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    # the mask was used: row 1's "last" token is position 3, not 6
    c = capture_residual_stream(model, ids, positions="last")
    assert not torch.allclose(a.logits[1], c.logits[1])
