"""Depth-usage metrics of the sparsity-vs-depth study (spec studies.md A.3.1-A.3.5, A.6) against
hand-built cases: identity / affine / duplicated / unread blocks, the naive full Jacobian, hooks
computed by hand, and interventions undone bit for bit."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaForCausalLM

import depth_probe as dp
from layerwise_core import capture_residual_stream, llama_config

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 128


def tiny_llama(layers: int = 4, seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    """A 4-block tiny Llama (d=64) with stronger random weights than the 0.02 init, so that blocks
    are clearly non-identity."""
    torch.manual_seed(seed)
    config = llama_config("llama-tiny", vocab_size=VOCAB, num_hidden_layers=layers)
    model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        for param in model.model.layers.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
    return model


def token_ids(rows: int = 8, length: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def padded(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the second row by 5 positions (padding must be left out of every mean)."""
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    return ids, mask


class AffineBlock(nn.Module):
    """A decoder block that is exactly affine: h -> h A + c (accepts HF's call signature)."""

    def __init__(self, hidden: int, seed: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.eye(hidden) + 0.1 * torch.randn(hidden, hidden, generator=g))
        self.c = nn.Parameter(0.1 * torch.randn(hidden, generator=g))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states @ self.A + self.c


class ChannelBlindRMSNorm(nn.Module):
    """RMSNorm that ignores channel `channel` entirely (zeroed before the RMS and the scaling)."""

    def __init__(self, norm: nn.Module, channel: int):
        super().__init__()
        self.norm = norm
        self.channel = channel

    def forward(self, hidden_states):
        keep = torch.ones(hidden_states.shape[-1], dtype=hidden_states.dtype)
        keep[self.channel] = 0
        return self.norm(hidden_states * keep)


def test_next_token_loss_equals_hf_loss_and_ignores_padding():
    model = tiny_llama()
    ids = token_ids(4, 16)
    with torch.no_grad():
        expected = float(model(ids, labels=ids).loss)
    assert dp.next_token_loss(model, ids) == pytest.approx(expected, rel=1e-6)
    assert dp.next_token_loss(model, ids, batch_size=3) == pytest.approx(expected, rel=1e-6)
    ids, mask = padded(ids)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    terms = []
    for b in range(4):
        n = int(mask[b].sum())
        terms.append(F.cross_entropy(logits[b, : n - 1], ids[b, 1:n], reduction="none"))
    by_hand = float(torch.cat(terms).mean())
    assert dp.next_token_loss(model, ids, mask) == pytest.approx(by_hand, rel=1e-6)


def test_identity_block_has_jacobian_distance_zero_and_is_useless(identity_blocks):
    model = identity_blocks(tiny_llama(), [1])
    ids = token_ids()
    jac = dp.jacobian_distance(model, ids[:4, :16], layers=[1, 2], batch_size=2)
    assert jac.distance[0] == 0.0 and jac.diagonal_mean[0] == 1.0
    assert jac.off_diagonal[0] == 0.0 and jac.spectral[0] == pytest.approx(1.0, abs=1e-6)
    assert jac.distance[1] > 1e-3  # a real block is not the identity
    assert jac.backward_passes == 2 * 64 * 2  # layers x rows x micro-batches
    use = dp.usefulness(model, ids, layers=[1])
    assert use.loss_ratio[0] == pytest.approx(1.0, abs=1e-6)
    assert not bool(use.useful[0]) and use.score == 0.0


def test_exactly_affine_block_is_replaced_without_loss_change():
    model = tiny_llama(dtype=torch.float64)
    model.model.layers[2] = AffineBlock(64).double()
    ids = token_ids()
    captured = capture_residual_stream(model, ids, kinds=("inputs", "outputs"))
    weight, bias = dp.fit_affine(captured.inputs[2], captured.outputs[2])
    torch.testing.assert_close(weight, model.model.layers[2].A.detach(), atol=1e-9, rtol=0)
    torch.testing.assert_close(bias, model.model.layers[2].c.detach(), atol=1e-9, rtol=0)
    use = dp.usefulness(model, ids, layers=[1, 2])
    assert use.loss_ratio[1] == pytest.approx(1.0, abs=1e-10)
    assert abs(float(use.loss_ratio[0]) - 1.0) > 1e-4  # the attention block 1 is not affine
    # the official quirk applies the transposed map: no longer exact
    quirk = dp.usefulness(model, ids, layers=[2], reference_quirks=True)
    assert abs(float(quirk.loss_ratio[0]) - 1.0) > 1e-4


def test_swapping_two_identical_blocks_gives_permutation_score_zero():
    model = tiny_llama()
    model.model.layers[2].load_state_dict(model.model.layers[0].state_dict())
    ids = token_ids()
    same = dp.permutation_scores(model, ids, pairs=[(2, 0)])
    assert same.pairs == [(0, 2)] and same.score == 0.0
    every = dp.permutation_scores(model, ids)
    assert len(every.pairs) == 6 and every.matrix[0, 2] == 0.0
    assert every.matrix[0, 1] > 1e-3  # distinct blocks: swapping changes the loss
    assert every.normalized == pytest.approx(every.score)  # all pairs tested
    # official 0.9^layer weighting, by hand
    per_layer = []
    for layer in range(4):
        values = [float(every.matrix[min(a, layer), max(a, layer)]) for a in range(4) if a != layer]
        per_layer.append(0.9**layer * sum(values) / len(values))
    assert every.weighted == pytest.approx(sum(per_layer) / 4)


def test_causal_score_of_a_block_nobody_reads_is_zero():
    model = tiny_llama()
    channel = 5
    with torch.no_grad():
        block = model.model.layers[1]  # writes only channel 5
        for linear in (block.self_attn.o_proj, block.mlp.down_proj):
            keep = torch.zeros_like(linear.weight)
            keep[channel] = 1
            linear.weight.mul_(keep)
    for later in model.model.layers[2:]:  # read everything but channel 5
        later.input_layernorm = ChannelBlindRMSNorm(later.input_layernorm, channel)
        later.post_attention_layernorm = ChannelBlindRMSNorm(
            later.post_attention_layernorm, channel
        )
    ids, mask = padded(token_ids())
    scores = dp.causal_scores(model, ids, mask, batch_size=4)
    assert scores.matrix.shape == (4, 4)
    assert float(scores.matrix[1, 2:].abs().max()) < 1e-6
    assert scores.per_block[1] < 1e-6
    assert scores.per_block[0] > 0.05  # block 0's output is read downstream
    assert math.isnan(float(scores.per_block[3]))  # no later block
    assert scores.score == pytest.approx(float(scores.per_block[:3].mean()))
    # by hand for (s=0, l=2): ratio of token means of ||Δ'_l - Δ_l|| and ||Δ_l||
    base = capture_residual_stream(model, ids, mask, kinds=("inputs", "outputs"))
    with dp.skip_layers(model, [0]):
        skipped = capture_residual_stream(model, ids, mask, kinds=("inputs", "outputs"))
    real = mask.bool()
    delta = (base.outputs[2] - base.inputs[2])[real]
    changed = (skipped.outputs[1] - skipped.inputs[1])[real]
    expected = float((changed - delta).norm(dim=-1).mean() / delta.norm(dim=-1).mean())
    assert float(scores.matrix[0, 2]) == pytest.approx(expected, rel=1e-5)


def test_rowwise_jacobian_equals_full_autograd_jacobian():
    model = tiny_llama(layers=3)  # RMSNorm computes in float32 whatever the model dtype
    ids = token_ids(2, 5)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    full = dp.full_block_jacobian(model, ids, mask, layer=1)
    rowwise = dp.block_jacobian(model, ids, mask, layer=1, batch_size=1)
    torch.testing.assert_close(rowwise, full, atol=1e-5, rtol=1e-4)
    looped = dp.block_jacobian(
        model, ids, mask, layer=1, rows=[3, 40], chunk=1
    )  # plain backward loop
    torch.testing.assert_close(looped, rowwise[:, [3, 40]], atol=1e-6, rtol=1e-5)
    assert float((full - torch.eye(64, dtype=full.dtype)).abs().max()) > 0.1  # not trivial
    stats = dp.jacobian_distance(model, ids, mask, layers=[1], batch_size=1)
    eye = torch.eye(64, dtype=torch.float64)
    assert float(stats.distance[0]) == pytest.approx(float((full - eye).norm()) / 64, rel=1e-5)
    off = full - torch.diag(torch.diag(full))
    assert float(stats.off_diagonal[0]) == pytest.approx(
        float(off.norm()) / math.sqrt(64 * 63), rel=1e-5
    )
    assert float(stats.diagonal_std[0]) == pytest.approx(float(torch.diag(full).std()), rel=1e-4)
    assert float(stats.spectral[0]) == pytest.approx(
        float(torch.linalg.matrix_norm(full, 2)), rel=1e-5
    )
    assert stats.tokens == 8 and not math.isnan(float(stats.distance_sem_windows[0]))


def test_sampled_rows_estimate_the_full_distance_within_their_standard_error():
    model = tiny_llama(layers=2)
    ids = token_ids(4, 16)
    exact = dp.jacobian_distance(model, ids, layers=[0, 1])
    sampled = dp.jacobian_distance(model, ids, layers=[0, 1], rows=24, seed=3)
    assert sampled.rows == 24 and exact.rows == 64
    assert torch.isnan(sampled.spectral).all() and (exact.distance_sem_rows == 0).all()
    assert (sampled.distance_sem_rows > 0).all()
    gap = (sampled.distance - exact.distance).abs()
    assert (gap < 4 * sampled.distance_sem_rows).all(), (gap, sampled.distance_sem_rows)
    few = dp.jacobian_distance(model, ids, layers=[0], windows=2, batch_size=1)
    assert few.tokens == 32 and few.backward_passes == 2 * 64


def test_variance_monitor_equals_hooks_by_hand_and_differs_from_quirk_at_the_last_layer():
    model = tiny_llama()
    ids, mask = padded(token_ids(4, 16))
    monitor = dp.LayerVarianceMonitor(model)
    model(ids, attention_mask=mask)  # not recording: not counted
    with monitor.record(False):
        model(ids, attention_mask=mask)  # disabled: not counted
    with monitor.record():
        model(ids[:2], attention_mask=mask[:2])
        model(ids[2:], mask[2:])  # the mask passed positionally
    stats = monitor.read()
    monitor.remove()
    assert stats.forwards == 2 and stats.tokens == int(mask.sum())
    stream = capture_residual_stream(model, ids, mask)
    real = mask.bool()
    for l in range(4):
        h, a, m = (
            t[real] for t in (stream.outputs[l], stream.attn_outputs[l], stream.mlp_outputs[l])
        )
        assert float(stats.output_var[l]) == pytest.approx(float(h.var(dim=-1).mean()), rel=1e-5)
        assert float(stats.attn_var[l]) == pytest.approx(float(a.var(dim=-1).mean()), rel=1e-5)
        assert float(stats.mlp_var[l]) == pytest.approx(float(m.var(dim=-1).mean()), rel=1e-5)
        halves = [
            t[:2][real[:2]].norm() + t[2:][real[2:]].norm() for t in (stream.attn_outputs[l],)
        ]
        assert float(stats.attn_norm[l]) == pytest.approx(float(halves[0]) / 2, rel=1e-5)
    torch.testing.assert_close(
        stats.output_var.float(), dp.output_variance(model, ids, mask), rtol=1e-5, atol=0
    )
    quirk = dp.layer_variance(model, ids, mask, reference_quirks=True, batch_size=2)
    torch.testing.assert_close(quirk.output_var[:3], stats.output_var[:3], rtol=1e-6, atol=0)
    normed = stream.final_norm_output[real]
    assert float(quirk.output_var[3]) == pytest.approx(float(normed.var(dim=-1).mean()), rel=1e-5)
    assert abs(quirk.last_layer_var / stats.last_layer_var - 1) > 0.1
    with dp.LayerVarianceMonitor(model) as fresh, pytest.raises(ValueError, match="record"):
        fresh.read()
    assert not model.model.layers[0]._forward_hooks  # hooks removed


def test_interventions_restore_the_model_bit_for_bit():
    model = tiny_llama()
    ids = token_ids(4, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = dp.next_token_loss(model, ids)
    g = torch.Generator().manual_seed(0)
    interventions = [
        lambda: dp.skip_layers(model, [1]),
        lambda: dp.swap_blocks(model, 0, 2),
        lambda: dp.affine_replacement(model, 1, torch.randn(64, 64, generator=g), torch.ones(64)),
    ]
    for make in interventions:
        with make():
            assert dp.next_token_loss(model, ids) != base
        assert dp.next_token_loss(model, ids) == base
    dp.usefulness(model, ids, layers=[0, 3])
    dp.causal_scores(model, ids, skipped=[0])
    dp.permutation_scores(model, ids, pairs=[(1, 3)])
    assert dp.next_token_loss(model, ids) == base
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [m.self_attn.layer_idx for m in model.model.layers] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="distinct"), dp.swap_blocks(model, 1, 1):
        pass


def test_metrics_accept_a_batch_dict_like_a_tensor_and_mask():
    model = tiny_llama(layers=2)
    ids = token_ids(2, 10)
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])  # left padding
    as_dict = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    assert dp.next_token_loss(model, ids, mask) == dp.next_token_loss(model, as_dict)
    assert dp.next_token_loss(model, ids) != dp.next_token_loss(model, as_dict)  # mask matters
    for metric, kwargs in (
        (dp.layer_variance, {}),
        (dp.jacobian_distance, {"rows": 8}),
        (dp.usefulness, {}),
        (dp.causal_scores, {}),
        (dp.permutation_scores, {}),
        (dp.attention_sparsity, {"min_query": 2}),
    ):
        a = metric(model, ids, mask, **kwargs).as_dict()
        b = metric(model, as_dict, **kwargs).as_dict()
        assert str(a) == str(b), metric.__name__  # NaN-safe equality
    torch.testing.assert_close(
        dp.block_jacobian(model, ids, mask, layer=0, rows=[1]),
        dp.block_jacobian(model, as_dict, layer=0, rows=[1]),
        rtol=0,
        atol=0,
    )
