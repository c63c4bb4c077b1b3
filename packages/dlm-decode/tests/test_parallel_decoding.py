"""Fast-dLLM: threshold and factor rules by hand, the no-cache loop against a plain loop from the spec,
per-row blocks in a batch, and the prefix / dual KV caches."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dlm_decode import (
    BlockKVCache,
    FastDLLM,
    as_masked_diffusion_lm,
    factor_rule,
    generate,
    threshold_rule,
)
from dlm_decode.kv_cache import cached_logits
from layerwise_core.tiny_models import tiny_bidirectional, tiny_shifted_bidirectional


def test_threshold_rule_by_hand():
    conf = torch.tensor([[0.95, 0.5, 0.92, 0.3], [0.2, 0.1, 0.3, 0.25]])
    cand = torch.ones(2, 4, dtype=torch.bool)
    got = threshold_rule(conf, cand, 0.9)
    # row 0: both >= 0.9; row 1: none, so only its most confident position
    assert got.tolist() == [[True, False, True, False], [False, False, True, False]]
    cand[0, 0] = False
    assert threshold_rule(conf, cand, 0.9)[0].tolist() == [False, False, True, False]


def test_factor_rule_by_hand():
    # sorted 0.99, 0.8, 0.7 with f = 1: thresholds -inf, 1 - 1/3 = 0.667, 1 - 1/4 = 0.75
    conf = torch.tensor([[0.7, 0.99, 0.8, 0.1]])
    cand = torch.tensor([[True, True, True, False]])
    assert factor_rule(conf, cand, 1.0).tolist() == [[False, True, True, False]]
    # released: the loop breaks at the last index (0.7 < 0.75) and still takes it
    assert factor_rule(conf, cand, 1.0, reference_quirks=True).tolist() == [
        [True, True, True, False]
    ]
    low = torch.tensor([[0.3, 0.2, 0.1, 0.05]])
    assert factor_rule(low, torch.ones(1, 4, dtype=torch.bool), 1.0).sum() == 1  # at least one


def test_threshold_decoding_by_hand(fl):
    # one block of 4 with confidences 0.95, 0.5, 0.92, 0.3 (static): step 1 commits offsets 0 and 2,
    # step 2 only the best remaining (offset 1), step 3 offset 3: 3 evaluations instead of 4.
    spec = {1: (1, 0.95), 2: (2, 0.5), 3: (3, 0.92), 4: (4, 0.3)}
    events = []
    out = generate(
        fl.model(fl.static(spec, 5)),
        torch.tensor([[0]]),
        FastDLLM(block_length=4, threshold=0.9),
        gen_length=4,
        callback=lambda e: events.append(e.committed[0].nonzero().flatten().tolist()),
    )
    assert events == [[1, 3], [2], [4]]
    assert out.generated.tolist() == [[1, 2, 3, 4]]
    assert out.stats.nfe.tolist() == [3] and out.stats.step_budget == 4


def reference_fast_dllm(model, prompt, gen_length, block_length, threshold, mask_id=127):
    """Fast-dLLM's `generate` with a threshold, as a plain loop from the spec (fp64 softmax)."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    nfe = 0
    for b in range(gen_length // block_length):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        while (x[:, lo:hi] == mask_id).any():
            nfe += 1
            logits = model(input_ids=x).logits
            mask_index = x == mask_id
            mask_index[:, hi:] = False
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
            conf = torch.where(mask_index, p, -math.inf)[0]
            order = torch.topk(conf, int(mask_index.sum())).indices
            for rank, pos in enumerate(order.tolist()):
                if rank == 0 or conf[pos] >= threshold:
                    x[0, pos] = x0[0, pos]
    return x, nfe


@pytest.mark.parametrize("quirks", [True, False])
def test_matches_plain_reference_and_batched_equals_per_row(quirks):
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompts = torch.randint(0, 100, (3, 4), generator=torch.Generator().manual_seed(2))
    strategy = FastDLLM(block_length=4, threshold=0.3, reference_quirks=quirks)
    batched = generate(model, prompts, strategy, gen_length=12)
    nfe = []
    for r in range(3):
        want, want_nfe = reference_fast_dllm(model, prompts[r : r + 1], 12, 4, 0.3)
        assert torch.equal(batched.sequences[r], want[0])
        nfe.append(want_nfe)
    assert batched.stats.nfe.tolist() == nfe  # each row counts its own evaluations
    assert len(set(nfe)) > 1 and min(nfe) < 12  # rows really differ and save steps


def test_fixed_schedule_without_threshold_is_llada():
    from dlm_decode import LLaDA

    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(0))
    fast = generate(model, prompt, FastDLLM(block_length=4, threshold=None, steps=6), gen_length=12)
    llada = generate(model, prompt, LLaDA(steps=6, block_length=4), gen_length=12)
    assert torch.equal(fast.sequences, llada.sequences)
    assert fast.stats.nfe.tolist() == [6, 6]


def test_block_kv_cache_splices_the_window():
    cache = BlockKVCache()
    k = torch.arange(6.0).reshape(1, 1, 6, 1)
    cache.update(k, -k, 0)  # refresh: records
    cache.recording, cache.window_start = False, 2
    keys, values = cache.update(torch.full((1, 1, 2, 1), 9.0), torch.full((1, 1, 2, 1), 8.0), 0)
    assert keys.flatten().tolist() == [0, 1, 9, 9, 4, 5]  # dual: prefix, new window, old suffix
    assert values.flatten().tolist() == [0, -1, 8, 8, -4, -5]
    keys, _ = cache.update(torch.full((1, 1, 4, 1), 7.0), torch.zeros(1, 1, 4, 1), 0)
    assert keys.flatten().tolist() == [0, 1, 7, 7, 7, 7]  # prefix: the window runs to the end


@pytest.mark.parametrize(
    "extra",
    [
        ((), {}),  # no extras
        (({"sin": None, "cos": None, "cache_position": None},), {}),  # <= 5.23: positional dict
        ((), {"cache_kwargs": {"cache_position": None}}),  # the same, by keyword
        ((), {"kwargs": {"position_ids": None}}),  # 5.25: kwargs=kwargs
    ],
)
def test_block_kv_cache_takes_every_transformers_update_call(extra):
    # Attention modules of each transformers version call `cache.update(k, v, layer_idx, ...)`
    # with different extras; the splice must not depend on them (same hand numbers as above).
    args, kwargs = extra
    cache = BlockKVCache()
    k = torch.arange(6.0).reshape(1, 1, 6, 1)
    cache.update(k, -k, 0, *args, **kwargs)
    cache.recording, cache.window_start = False, 2
    keys, _ = cache.update(
        torch.full((1, 1, 2, 1), 9.0), torch.zeros(1, 1, 2, 1), 0, *args, **kwargs
    )
    assert keys.flatten().tolist() == [0, 1, 9, 9, 4, 5]


def test_cached_pass_hands_the_cache_over_under_the_backbones_own_name():
    # transformers 5.25 renamed `past_key_values` to `cache` (old name deprecated until 5.40): a
    # cached pass must fill our cache, not a DynamicCache made beside it, and must not warn.
    lm = as_masked_diffusion_lm(tiny_bidirectional(seed=1, num_hidden_layers=2))
    x = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(0))
    cache = BlockKVCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cached_logits(lm, x, None, cache)
    assert sorted(cache.keys) == [0, 1] and cache.keys[0].shape[-2] == 8


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("make", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_cached_window_equals_full_logits_when_nothing_changed(make, attn):
    # eager: transformers adds the mask to the scores, so a bool mask must become additive (with
    # a bool mask, row 1's padding keys were attended and its logits moved by ~0.05)
    lm = as_masked_diffusion_lm(make(seed=1, initializer_range=0.3, attn_implementation=attn))
    x = torch.randint(0, 120, (3, 14), generator=torch.Generator().manual_seed(0))
    key_mask = torch.ones(3, 14, dtype=torch.long)
    key_mask[1, :3] = 0
    full = lm.logits(x, key_mask)
    cache = BlockKVCache()
    torch.testing.assert_close(cached_logits(lm, x, key_mask, cache), full)
    rows = torch.tensor([0, 1])
    for window in [(6, 10), (6, 14)]:
        got = cached_logits(lm, x[rows], key_mask[rows], cache, window=window, rows=rows)
        torch.testing.assert_close(got, full[rows][:, window[0] : window[1]])


def test_one_layer_model_makes_the_cache_semantics_exact():
    # With one layer, the cached K/V of a position depends on its own token only. So a window pass
    # is exact where the cached tokens did not change: the prefix cache then equals a fresh full
    # pass, and the dual cache equals a full pass over a canvas whose suffix keeps its old tokens.
    lm = as_masked_diffusion_lm(
        tiny_bidirectional(seed=1, initializer_range=0.3, num_hidden_layers=1)
    )
    x = torch.randint(0, 120, (1, 12), generator=torch.Generator().manual_seed(0))
    cache = BlockKVCache()
    cached_logits(lm, x, None, cache)
    changed = x.clone()
    changed[0, 5] = (x[0, 5] + 1) % 120  # a token of the block [4, 8) is committed
    changed[0, 10] = (x[0, 10] + 1) % 120  # and one of the suffix changes
    prefix = cached_logits(lm, changed, None, cache, window=(4, 12))
    dual = cached_logits(lm, changed, None, cache, window=(4, 8))
    torch.testing.assert_close(prefix, lm.logits(changed)[:, 4:])
    frozen_suffix = changed.clone()
    frozen_suffix[0, 8:] = x[0, 8:]
    torch.testing.assert_close(dual, lm.logits(frozen_suffix)[:, 4:8])
    assert not torch.allclose(dual, lm.logits(changed)[:, 4:8])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("make", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_caches_decode_every_position_and_count_refreshes(cache, make):
    model = make(seed=0, initializer_range=0.5)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 4, dtype=torch.long)
    mask[1, :2] = 0
    out = generate(model, prompt, FastDLLM(block_length=4, threshold=0.3, cache=cache),
                   gen_length=12, attention_mask=mask)  # fmt: skip
    assert not (out.generated == 127).any()
    assert (out.stats.nfe >= 3).all() and (out.stats.nfe <= 12).all()  # >= one refresh per block
    # threshold 0: each block is decoded by its refresh pass alone, exactly as without a cache
    everything = generate(model, prompt, FastDLLM(block_length=4, threshold=0.0, cache=cache),
                          gen_length=12, attention_mask=mask)  # fmt: skip
    plain = generate(model, prompt, FastDLLM(block_length=4, threshold=0.0), gen_length=12,
                     attention_mask=mask)  # fmt: skip
    assert torch.equal(everything.sequences, plain.sequences)
    assert everything.stats.nfe.tolist() == [3, 3]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("make", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_one_layer_model_decodes_the_same_with_and_without_cache(cache, make):
    # Fast-dLLM's caches are exact when no cached K/V can move: with one layer a position's K/V
    # depend on its own token only, the prefix is committed and the suffix is all [MASK] while a
    # block decodes. So cached decoding must equal uncached decoding token for token, with the
    # same number of evaluations (a refresh counts as one), padded rows included.
    # seed 3: a random tiny model whose argmax never picks [MASK] here (at some seeds it does, and
    # the threshold loop then re-commits [MASK] forever); the callback turns a hang into a failure
    model = make(seed=3, initializer_range=0.5, num_hidden_layers=1)
    prompt = torch.randint(0, 100, (3, 4), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1, :2] = 0

    def bounded(event):
        assert event.step <= 3 * 12, "no progress: the model keeps predicting [MASK]"

    kwargs = dict(gen_length=12, attention_mask=mask, callback=bounded)
    plain = generate(model, prompt, FastDLLM(block_length=4, threshold=0.3), **kwargs)
    cached = generate(model, prompt, FastDLLM(block_length=4, threshold=0.3, cache=cache), **kwargs)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.stats.nfe.tolist() == plain.stats.nfe.tolist()
    assert plain.stats.nfe.min() < 12  # the threshold really commits several tokens per step


def test_cache_errors_name_the_fix(fl):
    with pytest.raises(ValueError, match="cache=None"):
        generate(fl.model(fl.static({}, 6)), torch.tensor([[0, 1]]),
                 FastDLLM(block_length=4, cache="dual"), gen_length=4)  # fmt: skip


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_nfe_per_block_is_the_refresh_plus_the_passes_that_decode(cache):
    # Ours: per block 1 refresh pass + the cached passes while the block has masks.
    # Fixed schedule, gen 8 in 2 blocks of 4, steps 8: 1 commit per pass, so block b is decoded by
    # passes 4b+1 .. 4b+4 (refresh + 3 cached), NFE 8 (the released loops: 8 as well).
    # block_length 1 (threshold 0.9): each refresh decodes its block, NFE = 8 blocks x 1 pass;
    # the released do-while loops run one more (empty) cached pass per block: 16.
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(0))
    events = []

    def record(event):
        events.append((event.step, [c.nonzero().flatten().tolist() for c in event.committed]))

    out = generate(model, prompt, FastDLLM(block_length=4, threshold=None, steps=8, cache=cache),
                   gen_length=8, callback=record)  # fmt: skip
    assert out.stats.nfe.tolist() == [8, 8]
    assert [step for step, _ in events] == list(range(1, 9))
    for step, committed in events:
        block = (step - 1) // 4
        assert all(len(c) == 1 and 4 + 4 * block <= c[0] < 8 + 4 * block for c in committed)
    one = generate(model, prompt, FastDLLM(block_length=1, threshold=0.9, cache=cache),
                   gen_length=8)  # fmt: skip
    assert one.stats.nfe.tolist() == [8, 8]
    assert torch.equal(one.sequences, generate(model, prompt, FastDLLM(block_length=1),
                                               gen_length=8).sequences)  # fmt: skip


def test_a_model_stuck_on_mask_is_decoded_by_hand(fl):
    # Generation offset 1 predicts [MASK] with p = 0.9 at every forward, the most confident
    # position; token 2 is its runner-up (logit 1 below). The released loop commits [MASK] there
    # forever. Ours takes token 2 with its full-softmax probability 0.9/e / (0.9 + 0.9/e + 0.6/7)
    # = 0.25, so the other positions go first (0.6, 0.4, 0.3), one per pass (threshold 0.95).
    spec = {1: (3, 0.6), 2: (4, 0.5), 3: (5, 0.4), 4: (1, 0.3)}
    table = fl.static(spec, 5)
    stuck = fl.prob_logits(fl.MASK, 0.9)
    stuck[2] = stuck[fl.MASK] - 1.0

    def fn(x, call):
        logits = table(x, call)
        logits[:, 2] = stuck
        return logits

    model = fl.model(fn)
    out = generate(model, torch.tensor([[0]]), FastDLLM(block_length=4), gen_length=4)
    assert out.generated.tolist() == [[3, 2, 5, 1]]
    assert out.stats.nfe.tolist() == [4]
    quirks = FastDLLM(block_length=4, reference_quirks=True)
    with pytest.raises(RuntimeError, match="keeps predicting \\[MASK\\]"):
        generate(model, torch.tensor([[0]]), quirks, gen_length=4)
    assert model.calls == 4 + 6  # the released rule stalls from pass 1 and stops after 6


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_a_real_model_predicting_mask_everywhere_still_decodes(cache):
    # The [MASK] logit is raised above every other at every position: ours commits the best
    # non-[MASK] token, whose probability is now tiny, so one position per pass (as the plain
    # model at threshold 0.9), with or without a cache; the released rule would loop forever,
    # and stops with an error under reference_quirks.
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    mask = model.config.mask_token_id
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    plain = generate(model, prompt, FastDLLM(block_length=4, cache=cache), gen_length=8)

    def raise_mask(module, args, out):
        out = out.clone()
        out[..., mask] = out.max(-1).values + 5.0
        return out

    handle = model.get_output_embeddings().register_forward_hook(raise_mask)
    try:
        out = generate(model, prompt, FastDLLM(block_length=4, cache=cache), gen_length=8)
        quirks = FastDLLM(block_length=4, cache=cache, reference_quirks=True)
        with pytest.raises(RuntimeError, match="keeps predicting"):
            generate(model, prompt, quirks, gen_length=8)
    finally:
        handle.remove()
    assert not bool((out.generated == mask).any())
    # one position per pass at most 8 + (cache: one refresh per block, already counted)
    assert out.stats.nfe.tolist() == [8, 8] == plain.stats.nfe.tolist()
