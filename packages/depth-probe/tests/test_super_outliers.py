"""Channel magnitudes by hand at the embeddings, and the super-outlier rule on tiny real Llamas with
and without a planted outlier channel (causal, and bidirectional probed on masked copies)."""

import pytest
import torch

from depth_probe import channel_magnitudes, diffusion_probe_inputs, find_super_outliers
from layerwise_core import tiny_bidirectional, tiny_llama

PLANTED = 7  # the channel the planted bias writes
PLANT_LAYER = 1  # its block: the channel is in the stream entering blocks 2..5


def planted(factory, plant: bool = True, layers: int = 6):
    model = factory(num_hidden_layers=layers, mlp_bias=True, seed=1)
    if plant:
        with torch.no_grad():
            model.model.layers[PLANT_LAYER].mlp.down_proj.bias[PLANTED] = 100.0
    return model


def windows(n=6, length=10, vocab=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)


def test_magnitudes_mmr_and_persistence_at_the_embeddings_by_hand():
    model = tiny_llama(num_hidden_layers=3)
    ids = windows()
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[3, 5:] = 0
    result = channel_magnitudes(model, ids, mask, batch_size=4, persistence_factor=2.0)
    real = mask.bool()
    x = model.model.embed_tokens.weight[ids][real].detach().abs()  # h_0 of the real tokens
    torch.testing.assert_close(result.magnitude["residual"][0], x.mean(0))
    median = x.median(-1).values
    mmr = (x.amax(-1) / median).mean()
    torch.testing.assert_close(result.max_median_ratio["residual"][0], mmr)
    persistence = (x > 2.0 * median[:, None]).float().mean(0)
    torch.testing.assert_close(result.persistence["residual"][0], persistence)
    normed = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[real].abs()
    torch.testing.assert_close(result.magnitude["attn_input"][0], normed.detach().mean(0))
    assert result.tokens == int(real.sum())
    # the q/k/v inputs are the attention input; the per-position heatmap averages real rows only
    torch.testing.assert_close(result.magnitude["self_attn.q_proj"], result.magnitude["attn_input"])
    emb = model.model.embed_tokens.weight[ids].detach().abs() * real[..., None]
    expected = emb.sum(0) / real.sum(0)[:, None]
    torch.testing.assert_close(result.position_magnitude[0], expected)
    assert "mlp.down_proj" in result.linear_sites and result.block_mmr().shape == (3,)


def test_batches_add_up_to_the_whole():
    model = tiny_llama(num_hidden_layers=2)
    ids = windows(n=5)
    one = channel_magnitudes(model, ids, batch_size=5)
    many = channel_magnitudes(model, ids, batch_size=2)
    for site in one.sites:
        torch.testing.assert_close(one.magnitude[site], many.magnitude[site])
        torch.testing.assert_close(one.max_median_ratio[site], many.max_median_ratio[site])
        torch.testing.assert_close(one.persistence[site], many.persistence[site])


@pytest.mark.parametrize("site", ["attn_input", "residual"])
def test_planted_outlier_is_found_in_the_right_channel_and_layers(site):
    model = planted(tiny_llama)
    result = find_super_outliers(channel_magnitudes(model, windows()), site=site)
    assert result.found
    assert result.channel == PLANTED
    assert result.layers() == [2, 3, 4, 5]
    assert result.runs == [(PLANTED, 2, 4)]
    assert not result.qualifies[:2].any()
    assert (result.ratio[2:] >= 100).all() and (result.persistence[2:] >= 0.9).all()


def test_no_outlier_without_the_plant_and_thresholds_matter():
    clean = channel_magnitudes(planted(tiny_llama, plant=False), windows())
    assert not find_super_outliers(clean).found
    assert find_super_outliers(clean).channel is None
    magnitudes = channel_magnitudes(planted(tiny_llama), windows())
    # 4 qualifying layers: a run of >= 5 is required -> nothing; an impossible ratio -> nothing
    assert not find_super_outliers(magnitudes, min_layers=5).found
    assert not find_super_outliers(magnitudes, min_ratio=1e9).found
    # restricting the search to layers 2..3 leaves a run of 2 < 3
    assert not find_super_outliers(magnitudes, layers=[0, 1, 2, 3]).found


def test_a_diffusion_model_is_probed_on_masked_copies_and_finds_the_plant():
    model = planted(tiny_bidirectional)
    ids, mask = diffusion_probe_inputs(model, windows(n=3), copies=4, seed=0)
    assert ids.shape == (12, 10) and mask is None
    assert (ids == model.config.mask_token_id).any()
    result = find_super_outliers(channel_magnitudes(model, ids))
    assert result.channel == PLANTED and result.layers() == [2, 3, 4, 5]
    causal = tiny_llama()
    same, _ = diffusion_probe_inputs(causal, windows(n=3))
    assert torch.equal(same, windows(n=3))  # an AR model sees the windows unchanged
