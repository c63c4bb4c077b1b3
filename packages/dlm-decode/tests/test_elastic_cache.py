"""Elastic-Cache: exact limits (gamma = 1, a window over the whole generation), the drift test on
hand-made attention rows, the partial refresh's per-layer cache writes, and the NFE counters."""

import math

import pytest
import torch

from dlm_decode.adapters import as_masked_diffusion_lm
from dlm_decode.canvas import Canvas
from dlm_decode.elastic_cache import (
    ElasticCache,
    ElasticCacheConfig,
    _LayerCache,
    _Runner,
    attention_similarity,
)
from dlm_decode.generate import generate
from dlm_decode.parallel_decoding import threshold_rule
from dlm_decode.strategies import FastDLLM
from layerwise_core.tiny_models import tiny_bidirectional, tiny_shifted_bidirectional

MAKERS = [tiny_bidirectional, tiny_shifted_bidirectional]  # LLaDA-like, Dream-like


def _batch(rows: int = 3, prompt: int = 4):
    ids = torch.randint(0, 100, (rows, prompt), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(rows, prompt, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    return ids, mask


def _bounded(limit):
    def callback(event):
        assert event.step <= limit, "no progress: the model keeps predicting [MASK]"

    return callback


def _uncached_window_reference(model, ids, mask, gen_length, window, threshold):
    """Hand loop: every step a full forward of the whole canvas (lm.logits), commit the threshold
    rule among the `window` leftmost masks (tokens: the most likely non-[MASK] one, confidence its
    full-softmax probability). Returns (sequences, steps per row)."""
    lm = as_masked_diffusion_lm(model)
    canvas = Canvas(lm, ids, gen_length, attention_mask=mask)
    steps = torch.zeros(canvas.batch, dtype=torch.long)
    gen = canvas.positions >= canvas.prompt_length
    for _ in range(3 * gen_length):
        masked = (canvas.x == canvas.mask_id) & gen
        rows = masked.any(1).nonzero().flatten()
        if rows.numel() == 0:
            break
        steps[rows] += 1
        logits = lm.logits(canvas.x[rows], canvas.key_mask[rows])
        probs = logits.float().softmax(-1)
        probs[..., canvas.mask_id] = -1.0  # [MASK] is never committed: the best other token
        confidence, x0 = probs.max(-1)
        m = masked[rows]
        win = m & (m.long().cumsum(1) <= window)
        select = threshold_rule(confidence, win, threshold)
        canvas.x[rows] = torch.where(select, x0, canvas.x[rows])
    return canvas.x, steps


@pytest.mark.parametrize("make", MAKERS)
def test_gamma_one_equals_uncached_sliding_window_decoding(make):
    # gamma = 1 refreshes every layer at every step, so it must be exactly the uncached decoder
    # with the same window and threshold: same tokens, same number of evaluations per row.
    model = make(seed=3, initializer_range=0.5)
    ids, mask = _batch()
    strategy = ElasticCache(gamma=1.0, window=4, threshold=0.3)
    out = generate(model, ids, strategy, gen_length=12, attention_mask=mask, callback=_bounded(36))
    ref, steps = _uncached_window_reference(model, ids, mask, 12, window=4, threshold=0.3)
    assert torch.equal(out.sequences, ref)
    assert out.stats.nfe.tolist() == steps.tolist()
    assert steps.min() < 12  # several tokens per step: the threshold really works in parallel
    assert all(all(layer == 0 for _, layer in row) for row in strategy.refresh_log)


@pytest.mark.parametrize("make", MAKERS)
def test_whole_generation_window_with_refresh_equals_fast_dllm_uncached(make):
    # A window over every mask + refresh every step = Fast-dLLM's threshold decoding with one block
    # of the whole generation, no cache: token for token, NFE for NFE.
    model = make(seed=3, initializer_range=0.5)
    ids, mask = _batch()
    kwargs = dict(gen_length=12, attention_mask=mask, callback=_bounded(36))
    elastic = generate(model, ids, ElasticCache(gamma=1.0, window=64, threshold=0.3), **kwargs)
    plain = generate(model, ids, FastDLLM(block_length=12, threshold=0.3), **kwargs)
    assert torch.equal(elastic.sequences, plain.sequences)
    assert elastic.stats.nfe.tolist() == plain.stats.nfe.tolist()


@pytest.mark.parametrize("make", MAKERS)
def test_gamma_zero_never_refreshes_after_the_first_pass(make):
    # sigma is a cosine of non-negative vectors, so sigma >= 0: gamma = 0 never fails the test and
    # only step 1 (the full pass that fills the cache) recomputes every position.
    model = make(seed=3, initializer_range=0.5)
    ids, mask = _batch()
    strategy = ElasticCache(gamma=0.0, window=4, threshold=0.3)
    out = generate(model, ids, strategy, gen_length=12, attention_mask=mask, callback=_bounded(36))
    assert strategy.refresh_log == [[(1, 0)]] * 3
    assert not (out.generated == model.config.mask_token_id).any()
    assert (out.stats.nfe > 1).all()  # later steps ran, on the cache


def test_attention_similarity_hand_values():
    # head 0: cos([.5, .5, 0], [1, 0, 0]) = .5 / (sqrt(.5) * 1) = 1/sqrt(2); head 1: identical
    # rows, cos = 1. Mean over heads (one tracked token): (1/sqrt(2) + 1) / 2.
    before = torch.tensor([[[[0.5, 0.5, 0.0]], [[0.2, 0.3, 0.5]]]])  # (N=1, H=2, T=1, K=3)
    now = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.2, 0.3, 0.5]]]])
    expected = (1 / math.sqrt(2) + 1) / 2
    assert attention_similarity(before, now).item() == pytest.approx(expected, abs=1e-6)
    # a second tracked token [0, 1, 0] -> [0, 0, 1] (cos 0 on both heads) only counts when valid
    before2 = torch.cat([before, torch.tensor([0.0, 1.0, 0.0]).expand(1, 2, 1, 3)], dim=2)
    now2 = torch.cat([now, torch.tensor([0.0, 0.0, 1.0]).expand(1, 2, 1, 3)], dim=2)
    both = attention_similarity(before2, now2, torch.tensor([[True, True]])).item()
    assert both == pytest.approx((1 / math.sqrt(2) + 1 + 0 + 0) / 4, abs=1e-6)
    first = attention_similarity(before2, now2, torch.tensor([[True, False]])).item()
    assert first == pytest.approx(expected, abs=1e-6)
    assert attention_similarity(before2, now2, torch.tensor([[False, False]])).item() == 1.0


def _runner(make, layers=2, attn_implementation=None, gamma=0.0):
    overrides = {"num_hidden_layers": layers}
    if attn_implementation:
        overrides["attn_implementation"] = attn_implementation
    model = make(seed=1, initializer_range=0.3, **overrides)
    lm = as_masked_diffusion_lm(model)
    ids, mask = _batch(rows=2, prompt=5)
    canvas = Canvas(lm, ids, 8, attention_mask=mask)
    canvas.x[:, 5:8] = torch.tensor([[3, 4, 5], [6, 7, 8]])  # some decoded tokens
    return lm, canvas, _Runner(lm, canvas, gamma=gamma, track_num=1)


def _masks(canvas, window):
    masked = (canvas.x == canvas.mask_id) & (canvas.positions >= canvas.prompt_length)
    return masked & (masked.long().cumsum(1) <= window)


@pytest.mark.parametrize("make", MAKERS)
def test_full_pass_and_unchanged_reuse_pass_give_the_model_logits(make):
    # The layer-by-layer pass equals the model's own forward; a reuse pass over the query set
    # with nothing changed reads every other position from the cache and must give the same.
    lm, canvas, runner = _runner(make)
    rows = torch.arange(2)
    win = _masks(canvas, 3)
    full = lm.logits(canvas.x, canvas.key_mask)
    start = torch.zeros(2, dtype=torch.long)
    logits, widx, _, track = runner.forward(rows, win, win.clone(), win & False, start)
    torch.testing.assert_close(logits, full.gather(1, widx[..., None].expand(-1, -1, 128)))
    query = win | track
    if lm.logit_shift:
        query[:, :-1] |= win[:, 1:]
    reuse = torch.full((2,), len(runner.layers), dtype=torch.long)
    again, *_ = runner.forward(rows, win, query, track, reuse)
    torch.testing.assert_close(again, logits)
    assert reuse.tolist() == [2, 2]  # gamma = 0: no refresh
    runner.close()


def test_captured_attention_rows_match_eager_attention_weights():
    # The drift test and the most-attended token read attention rows the runner rebuilds from the
    # captured queries (q_proj, RoPE, scaling, GQA): they must equal the model's own (eager) ones.
    # No padding here: the bidirectional test model's eager path adds its boolean 4-D mask to the
    # scores instead of masking padded keys (sdpa is right), so padded rows cannot be compared.
    model = tiny_bidirectional(seed=1, initializer_range=0.3, attn_implementation="eager")
    lm = as_masked_diffusion_lm(model)
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    canvas = Canvas(lm, ids, 8)
    canvas.x[:, 5:8] = torch.tensor([[3, 4, 5], [6, 7, 8]])
    runner = _Runner(lm, canvas, gamma=0.0, track_num=1)
    rows = torch.arange(2)
    win = _masks(canvas, 3)
    logits, widx, *_ = runner.forward(rows, win, win.clone(), win & False, torch.zeros(2).long())
    full = lm.logits(canvas.x)
    torch.testing.assert_close(logits, full.gather(1, widx[..., None].expand(-1, -1, 128)))
    out = model(input_ids=canvas.x, output_attentions=True)
    assert len(out.attentions) == len(runner.layers)
    for layer, weights in enumerate(out.attentions):
        state = runner.state
        rebuilt = runner._attention(layer, state.queries[layer], state.keys[layer], rows)
        torch.testing.assert_close(rebuilt, weights.float())
    runner.close()


@pytest.mark.parametrize("make", MAKERS)
def test_partial_refresh_keeps_shallow_caches_and_recomputes_deep_layers(make):
    lm, canvas, runner = _runner(make, layers=4)
    rows = torch.arange(2)
    state = runner.state
    win = _masks(canvas, 2)
    runner.forward(rows, win, win.clone(), win & False, torch.zeros(2, dtype=torch.long))
    before = {
        name: [t.clone() for t in getattr(state, name)] for name in ("keys", "values", "hidden")
    }
    fresh = win.clone()
    canvas.x[fresh] = 9  # the window is committed: those tokens changed
    win = _masks(canvas, 2)
    query = win | fresh
    if lm.logit_shift:
        query[:, :-1] |= win[:, 1:]
    refresh_from = torch.full((2,), 2, dtype=torch.long)  # as if the test failed at layer 1
    runner.forward(rows, win, query, win & False, refresh_from)
    untouched = ~query[:, None, :, None]
    for layer in (0, 1):  # shallow layers: only the queried rows were written
        for name in ("keys", "values"):
            new, old = getattr(state, name)[layer], before[name][layer]
            assert torch.equal(new[untouched.expand_as(new)], old[untouched.expand_as(old)])
            assert not torch.equal(new, old)  # the queried rows were
    # layer 2's input: the cached one, with the queried rows written in (the paper's restore)
    keep = ~query[..., None].expand_as(state.hidden[2])
    assert torch.equal(state.hidden[2][keep], before["hidden"][2][keep])
    for layer in (2, 3):  # deep layers: every position recomputed from that input
        attn = runner.layers[layer]
        recorder = _LayerCache(state, layer, rows, None, None)
        saved = [t.clone() for t in (state.keys[layer], state.values[layer])]
        cos, sin = runner.backbone.rotary_emb(state.hidden[layer], runner.positions)
        mask4d = canvas.key_mask.bool()[:, None, None, :].expand(2, 1, 13, 13)
        out = attn(state.hidden[layer], attention_mask=mask4d, position_embeddings=(cos, sin),
                   use_cache=True, **{runner.keyword: recorder})  # fmt: skip
        torch.testing.assert_close(state.keys[layer], saved[0], rtol=0, atol=0)
        off = untouched.expand_as(saved[0])
        if layer == 2:
            # a layer's K/V at a position depend on its own input only: layer 2's input there is
            # the restored cache, so its K/V are too; its outputs (layer 3's input) are new
            torch.testing.assert_close(out, state.hidden[3])
            assert torch.equal(saved[0][off], before["keys"][2][off])
            stale = ~query[..., None].expand_as(out)
            assert not torch.allclose(out[stale], before["hidden"][3][stale])
        else:  # the first layer whose K/V move everywhere
            assert not torch.allclose(saved[0][off], before["keys"][3][off])
    runner.close()


def test_every_evaluation_is_counted_once_per_row():
    model = tiny_bidirectional(seed=3, initializer_range=0.5, num_hidden_layers=3)
    ids, mask = _batch()
    steps = torch.zeros(3, dtype=torch.long)
    calls = []

    def record(event):
        steps[event.rows] += 1
        assert event.step <= 36

    hook = model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        for gamma in (0.9, 1.0):
            steps.zero_()
            calls.clear()
            strategy = ElasticCache(gamma=gamma, window=4, threshold=0.3)
            out = generate(model, ids, strategy, gen_length=12, attention_mask=mask,
                           callback=record)  # fmt: skip
            assert out.stats.nfe.tolist() == steps.tolist()  # one NFE per row per step
            assert out.stats.forward_calls == int(steps.max())
            if gamma == 1.0:  # every step: one full pass, one call of each layer
                assert len(calls) == out.stats.forward_calls
            else:  # query rows and refreshed rows are fed in at most two calls per layer
                assert out.stats.forward_calls <= len(calls) <= 2 * out.stats.forward_calls
            assert sum(len(r) for r in strategy.refresh_log) <= int(out.stats.nfe.sum())
    finally:
        hook.remove()


def test_config_defaults_and_validation():
    config = ElasticCacheConfig()
    assert (config.gamma, config.window, config.threshold, config.track_num) == (0.9, 16, 0.9, 1)
    assert config.build() == ElasticCache()
    with pytest.raises(ValueError, match="gamma"):
        ElasticCache(gamma=1.5)
    with pytest.raises(ValueError, match="window"):
        ElasticCacheConfig.from_dict({"window": 0})


def test_refuses_a_model_without_a_transformers_backbone(fl):
    model = fl.model(fl.static({}, 6))
    with pytest.raises(ValueError, match="layer by layer"):
        generate(model, torch.tensor([[1, 2]]), ElasticCache(), gen_length=4)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_a_model_predicting_mask_everywhere_still_finishes(gamma):
    # The [MASK] logit is raised above every other at every position (the hook is on the output
    # head, which the layer-by-layer runner calls too): the loop runs until no mask is left, so
    # committing [MASK] would hang it; it must commit the best other token instead.
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    mask = model.config.mask_token_id
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(1))

    def raise_mask(module, args, out):
        out = out.clone()
        out[..., mask] = out.max(-1).values + 5.0
        return out

    handle = model.get_output_embeddings().register_forward_hook(raise_mask)
    try:
        out = generate(model, prompt, ElasticCache(gamma=gamma, window=4), gen_length=8)
    finally:
        handle.remove()
    assert not bool((out.generated == mask).any())
    # every confidence is now tiny, so only the top-1 of the window is committed per step
    assert out.stats.nfe.tolist() == [8, 8]
