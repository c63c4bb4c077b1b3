import torch

from layerwise_core import tiny_llama
from ln_scaling import residual_variance


def test_equals_variance_of_hf_hidden_states_before_the_final_norm():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 8))
    got = residual_variance(model, ids)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    # HF's last entry is after the final norm: recompute h_L as h_2 + block 2 instead
    expected = [h.var(-1).mean() for h in hidden[:-1]]
    assert got.shape == (4,)
    torch.testing.assert_close(got[:3], torch.stack(expected))
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4])
    masked = residual_variance(model, ids, mask)
    manual = (hidden[1].var(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(masked[1], manual)


def test_a_batch_dict_and_a_tensor_with_mask_give_the_same_variances():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5])
    tensor_form = residual_variance(model, ids, mask)
    dict_form = residual_variance(model, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(dict_form, tensor_form, rtol=0, atol=0)
    # the dict's mask is used for the token average too (it differs from the unmasked one)
    assert not torch.allclose(residual_variance(model, ids), dict_form)
