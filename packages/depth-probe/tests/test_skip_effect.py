import copy

import pytest
import torch

from depth_probe import capture_depth, remove_layers, skip_effect, skip_layer_before
from layerwise_core import tiny_bidirectional, tiny_llama


def test_an_identity_block_has_no_effect(identity_blocks):
    model = identity_blocks(tiny_llama(num_hidden_layers=4), [2])
    result = skip_effect(model, torch.randint(0, 128, (2, 8)), positions=[3, 5])
    assert result.relative_change[2].abs().max().item() == 0.0
    assert result.output_change[2].item() == 0.0
    assert result.relative_change[1].max() > 0 and result.output_change[1] > 0


def test_no_effect_at_or_before_the_skipped_block():
    # h_l at positions >= t depends on earlier tokens only through layers after s
    for model in (tiny_llama(num_hidden_layers=4), tiny_bidirectional(num_hidden_layers=4)):
        result = skip_effect(model, torch.randint(0, 120, (2, 8)))
        for s in range(4):
            assert result.relative_change[s, : s + 1].abs().max().item() < 1e-6
            if s < 3:
                assert result.relative_change[s, s + 1 :].max() > 1e-4


def test_tokens_before_t_see_the_model_without_the_block():
    # independent path: in a causal LM the tokens before t only see tokens before t, all of which
    # skip the block, so their logits are those of the model with the block removed
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 7))
    pruned = remove_layers(copy.deepcopy(model), [1])
    with torch.no_grad():
        base = model(ids).logits
        removed = pruned(ids).logits
        with skip_layer_before(model, 1, 4, no_skip_front=0):
            mixed = model(ids).logits
    torch.testing.assert_close(mixed[:, :4], removed[:, :4])
    assert (mixed[:, 4:] - base[:, 4:]).abs().max() > 1e-5
    assert (mixed[:, 4:] - removed[:, 4:]).abs().max() > 1e-5


def test_numbers_follow_the_definition():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 7))
    result = skip_effect(model, ids, positions=[4], layers=[0])
    with torch.no_grad():
        base = capture_depth(model, ids)
        with skip_layer_before(model, 0, 4):
            new = capture_depth(model, ids)
    d = torch.stack(base.hidden_states).diff(dim=0)
    d_new = torch.stack(new.hidden_states).diff(dim=0)
    rel = ((d - d_new).norm(dim=-1) / d.norm(dim=-1))[:, :, 4:].amax(dim=(1, 2))
    torch.testing.assert_close(result.relative_change[0], rel)
    p, p_new = base.stream.logits.softmax(-1), new.stream.logits.softmax(-1)
    out = (p - p_new)[:, 4:].norm(dim=-1).max()
    assert result.output_change[0].item() == pytest.approx(out.item(), rel=1e-5)
    assert result.relative_change[1:].abs().sum() == 0  # only layer 0 was asked for
