import torch

from depth_probe import DepthCapture, capture_depth
from layerwise_core import tiny_bidirectional, tiny_llama, tiny_qwen2


def test_one_forward_records_hf_hidden_states_before_the_final_norm():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 9))
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        capture = capture_depth(model, ids)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hf = out.hidden_states
    for mine, theirs in zip(capture.hidden_states[:-1], hf[:-1]):
        torch.testing.assert_close(mine, theirs)
    # the final-norm trap: HF's last entry is AFTER the final norm, ours is before it
    last = capture.hidden_states[-1]
    assert not torch.allclose(last, hf[-1], atol=1e-3)
    torch.testing.assert_close(model.model.norm(last), hf[-1])
    torch.testing.assert_close(capture.stream.logits, out.logits)


def test_attention_inputs_are_the_normed_block_inputs():
    model = tiny_qwen2(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 7))
    capture = capture_depth(model, ids)
    with torch.no_grad():
        for layer, h in enumerate(capture.hidden_states[:-1]):
            expected = model.model.layers[layer].input_layernorm(h)
            torch.testing.assert_close(capture.attn_inputs[layer], expected)


def test_padding_mask_and_last_positions():
    model = tiny_bidirectional(num_hidden_layers=2)
    ids = torch.randint(0, 120, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [0] * 2 + [1] * 4])
    capture = capture_depth(model, ids, mask)
    assert isinstance(capture, DepthCapture)
    assert capture.mask.tolist() == mask.bool().tolist()
    assert capture.last_positions().tolist() == [5, 3, 5]
    assert capture.real_tokens(capture.hidden_states[0]).shape == (14, 32)
    assert capture.logit_shift == 0  # LLaDA-like: position i scores token i


def test_zero_channels_copies_and_zeroes_only_those_channels():
    model = tiny_llama(num_hidden_layers=2)
    capture = capture_depth(model, torch.randint(0, 128, (1, 5)))
    zeroed = capture.zero_channels([3, 7])
    for before, after in zip(capture.hidden_states, zeroed.hidden_states):
        assert after[..., [3, 7]].abs().sum() == 0
        keep = [i for i in range(32) if i not in (3, 7)]
        torch.testing.assert_close(after[..., keep], before[..., keep])
        assert before[..., [3, 7]].abs().sum() > 0  # the original is untouched
