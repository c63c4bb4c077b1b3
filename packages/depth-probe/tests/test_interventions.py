"""zero_outlier_channel: changes outputs while active, restores weights and outputs bit for bit after
(also after an exception), zeroes the channel where it should; and repetition metrics by hand."""

import pytest
import torch

from depth_probe import (
    channel_magnitudes,
    find_super_outliers,
    longest_loop,
    out_projections,
    repeated_ngram_share,
    repetition_metrics,
    skip_layers,
    zero_outlier_channel,
)
from layerwise_core import capture_residual_stream, find_decoder, tiny_llada_style, tiny_llama

C = 7


def planted_model():
    model = tiny_llama(num_hidden_layers=4, mlp_bias=True, seed=2)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.bias[C] = 50.0
    return model


IDS = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("mode", ["hook", "rows"])
def test_active_changes_outputs_and_exit_restores_bit_for_bit(mode):
    model = planted_model()
    weights = snapshot(model)
    logits = model(IDS).logits
    with zero_outlier_channel(model, C, mode=mode):
        changed = model(IDS).logits
        stream = capture_residual_stream(model, IDS)
    assert not torch.allclose(changed, logits, atol=1e-3)
    assert torch.equal(model(IDS).logits, logits)
    assert_bitwise(model, weights)
    if mode == "hook":  # every block output has the channel at exactly 0
        assert all((o[..., C] == 0).all() for o in stream.outputs)
    else:  # the blocks no longer write it: what is left is the embeddings' channel
        emb = model.model.embed_tokens(IDS)[..., C]
        assert all(torch.allclose(o[..., C], emb) for o in stream.outputs)


def test_rows_are_zero_inside_and_the_planted_outlier_is_gone():
    model = planted_model()
    weights = snapshot(model)
    writers = out_projections(find_decoder(model)[0])
    assert writers == [model.model.layers[0].self_attn.o_proj, model.model.layers[0].mlp.down_proj]
    assert find_super_outliers(channel_magnitudes(model, IDS)).channel == C
    with zero_outlier_channel(model, [C], layers=[0], mode="rows"):
        for w in writers:
            assert (w.weight[C] == 0).all() and (w.bias is None or w.bias[C] == 0)
        assert w.weight[C + 1].abs().sum() > 0  # other rows untouched
        assert not find_super_outliers(channel_magnitudes(model, IDS)).found
        assert model.model.layers[1].mlp.down_proj.weight[C].abs().sum() > 0  # only layer 0
    assert_bitwise(model, weights)


def test_restored_after_an_exception_and_layers_are_checked():
    model = planted_model()
    weights, logits = snapshot(model), model(IDS).logits
    with pytest.raises(RuntimeError), zero_outlier_channel(model, C, mode="rows"):
        raise RuntimeError
    with pytest.raises(RuntimeError), zero_outlier_channel(model, C, mode="hook"):
        raise RuntimeError
    assert_bitwise(model, weights)
    assert torch.equal(model(IDS).logits, logits)
    with (
        pytest.raises(ValueError, match="out of range"),
        zero_outlier_channel(model, C, layers=[9]),
    ):
        pass
    with pytest.raises(ValueError, match="hidden size"), zero_outlier_channel(model, 99):
        pass


def test_llada_layout_out_projections_and_block_skipping_restores():
    model = tiny_llada_style(num_hidden_layers=2)
    block = model.model.transformer.blocks[1]
    assert out_projections(find_decoder(model)[1]) == [block.attn_out, block.ff_out]
    ids = IDS % 127
    logits = model(ids).logits
    with zero_outlier_channel(model, 3, mode="rows"):
        assert not torch.equal(model(ids).logits, logits)
    assert torch.equal(model(ids).logits, logits)
    llama = planted_model()
    before = llama(IDS).logits
    with skip_layers(llama, [1]):
        assert not torch.allclose(llama(IDS).logits, before)
    assert torch.equal(llama(IDS).logits, before)


def test_repetition_metrics_by_hand():
    abab = [1, 2, 1, 2, 1, 2]
    assert repeated_ngram_share(abab, 2) == pytest.approx(3 / 5)  # ab ba [ab] [ba] [ab]
    assert repeated_ngram_share(abab, 4) == pytest.approx(1 / 3)  # abab baba [abab]
    assert longest_loop(abab) == (6, 2)
    assert longest_loop([5, 1, 2, 3, 1, 2, 3, 1, 9]) == (7, 3)  # 123 123 1
    assert longest_loop([1, 2, 3, 4]) == (0, 0)
    assert longest_loop([4, 4, 4, 4, 4]) == (5, 1)
    assert longest_loop([1, 2, 3, 1, 2]) == (0, 0)  # a unit must repeat in full
    assert repeated_ngram_share([1, 2, 3], 4) == 0.0
    metrics = repetition_metrics(torch.tensor([abab, [1, 2, 3, 4, 5, 6]]), n=2)
    assert metrics.repeated_ngram_share == pytest.approx(0.3)
    assert metrics.longest_loop == pytest.approx(3.0)
    assert metrics.per_sequence[0] == {
        "repeated_ngram_share": pytest.approx(0.6),
        "longest_loop": 6,
        "loop_period": 2,
    }
