"""SOAR's position beam search as the paper describes it: greedy limits, hand-summed log-prob
scores, de-duplication, collapse, batching and per-row NFE."""

import math

import pytest
import torch

from dlm_decode import SOAR, LLaDA, as_masked_diffusion_lm, generate
from dlm_decode.soar_beam import SOARBeam, SOARBeamConfig
from layerwise_core.tiny_models import tiny_bidirectional, tiny_shifted_bidirectional

P = 1  # the fixed-logits tests use the one-token prompt [[0]]


def _prompts(n=3, length=4, seed=1):
    return torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_one_beam_without_threshold_is_llada_one_token_per_step(make):
    model = make(seed=0, initializer_range=0.5)
    prompts = _prompts()
    beam = generate(model, prompts, SOARBeam(beam_width=1, confidence_threshold=None,
                                             block_length=4), gen_length=12)  # fmt: skip
    llada = generate(model, prompts, LLaDA(steps=12, block_length=4), gen_length=12)
    assert torch.equal(beam.sequences, llada.sequences)
    assert beam.stats.nfe.tolist() == [12] * 3 == beam.stats.sequence_evals.tolist()


def _greedy_soar_by_hand(model, prompt, gen_length, block_length, threshold, most):
    """Greedy SOAR written out: commit the (at most `most`) positions of the current block with
    p > threshold, else the single most confident one. Returns the canvas and the commit sizes."""
    lm = as_masked_diffusion_lm(model)
    mask = lm.mask_token_id
    x = torch.cat([prompt, torch.full((gen_length,), mask)])[None]
    sizes = []
    while (x == mask).any():
        with torch.no_grad():
            probs = lm.logits(x).float().softmax(-1)[0]
        p, x0 = probs.max(-1)
        masked = (x[0] == mask).nonzero().flatten()
        block_start = len(prompt) + (int(masked[0]) - len(prompt)) // block_length * block_length
        positions = masked[masked < block_start + block_length]
        conf = p[positions]
        high = positions[conf > threshold]
        if high.numel():
            chosen = high[p[high].argsort(descending=True)[:most]]
        else:
            chosen = positions[conf.argmax()][None]
        x[0, chosen] = x0[chosen]
        sizes.append(chosen.numel())
    return x[0], sizes


def test_one_beam_with_threshold_is_greedy_soar_by_hand():
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    threshold, most = 0.3, 3
    strategy = SOARBeam(beam_width=1, confidence_threshold=threshold, max_parallel_tokens=most,
                        block_length=6)  # fmt: skip
    released = SOAR(steps=12, block_length=6, max_beam_size=1, confidence_threshold=threshold,
                    max_parallel_tokens=most)  # fmt: skip
    saw_parallel = saw_single = False
    for prompt in _prompts(4):
        want, sizes = _greedy_soar_by_hand(model, prompt, 12, 6, threshold, most)
        saw_parallel |= max(sizes) > 1
        saw_single |= min(sizes) == 1
        got = generate(model, prompt[None], strategy, gen_length=12)
        assert torch.equal(got.sequences[0], want)
        assert got.stats.nfe.tolist() == [len(sizes)] == got.stats.sequence_evals.tolist()
        # with one beam the released code is the same greedy rule
        assert torch.equal(
            generate(model, prompt[None], released, gen_length=12).sequences[0], want
        )
    assert saw_parallel and saw_single  # both branches were exercised


def _context_model(fl):
    """Predictions depend on which of generation offsets 0 and 1 are decoded (3 positions):
    none: 0 -> (1, .6), 1 -> (2, .55), 2 -> (3, .2); only 0: 1 -> (2, .3), 2 -> (3, .25);
    only 1: 0 -> (5, .34), 2 -> (3, .2); both: 2 -> (3, .5)."""
    mask = fl.MASK

    def fn(x, call):
        rows = []
        for b in range(x.shape[0]):
            first, second = bool(x[b, P] != mask), bool(x[b, P + 1] != mask)
            if not first and not second:
                spec = {P: (1, 0.6), P + 1: (2, 0.55), P + 2: (3, 0.2)}
            elif first and not second:
                spec = {P + 1: (2, 0.3), P + 2: (3, 0.25)}
            elif second and not first:
                spec = {P: (5, 0.34), P + 2: (3, 0.2)}
            else:
                spec = {P + 2: (3, 0.5)}
            rows.append(fl.static(spec, x.shape[1])(x[b : b + 1], call)[0])
        return torch.stack(rows)

    return fl.model(fn)


def test_scores_are_hand_summed_log_probs(fl):
    # step 1: beams A = {0: 1} (log .6) and B = {1: 2} (log .55). Step 2: A+1 = .6 * .3 = .18,
    # A+2 = .15, B+0 = .55 * .34 = .187, B+2 = .11: keep B+0, A+1 (log order). Step 3: both
    # complete with p = .5: B (.0935) beats A (.09). Summed probabilities rank A first (1.4 vs
    # 1.39), which is what the released scoring returns.
    strategy = SOARBeam(record_beams=True)
    out = generate(_context_model(fl), torch.tensor([[0]]), strategy, gen_length=3)
    log = math.log
    want = [
        [log(0.6), log(0.55)],
        [log(0.55) + log(0.34), log(0.6) + log(0.3)],
        [log(0.55) + log(0.34) + log(0.5), log(0.6) + log(0.3) + log(0.5)],
    ]
    got = [[b.score for b in kept] for _, _, kept in strategy.beam_history]
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    assert strategy.beam_history[1][2][0].sequence[P:].tolist() == [5, 2, fl.MASK]
    assert out.generated.tolist() == [[5, 2, 3]]
    assert out.stats.nfe.tolist() == [3] and out.stats.sequence_evals.tolist() == [1 + 2 + 2]
    summed = SOARBeam(score="prob_sum", record_beams=True)
    by_sum = generate(_context_model(fl), torch.tensor([[0]]), summed, gen_length=3)
    assert by_sum.generated.tolist() == [[1, 2, 3]]
    assert [b.score for b in summed.beam_history[-1][2]] == pytest.approx([1.4, 1.39], abs=1e-5)
    released = generate(_context_model(fl), torch.tensor([[0]]), SOAR(steps=3, block_length=3),
                        gen_length=3)  # fmt: skip
    assert released.generated.tolist() == [[1, 2, 3]]


def test_two_paths_to_one_canvas_keep_one(fl):
    # static p = .6, .5, .4, .3 at offsets 0..3. Step 2: A{0}+1 and B{1}+0 are the same canvas
    # (score log .3 both): one is kept, and A{0}+2 (log .24) takes the second place, not a copy.
    # Step 4: both beams complete to the one full canvas: a single beam is left.
    spec = {P: (1, 0.6), P + 1: (2, 0.5), P + 2: (3, 0.4), P + 3: (4, 0.3)}
    strategy = SOARBeam(record_beams=True)
    out = generate(fl.model(fl.static(spec, P + 4)), torch.tensor([[0]]), strategy, gen_length=4)
    M = fl.MASK
    kept = [[b.sequence[P:].tolist() for b in beams] for _, _, beams in strategy.beam_history]
    assert kept[1] == [[1, 2, M, M], [1, M, 3, M]]
    assert [b.score for b in strategy.beam_history[1][2]] == pytest.approx(
        [math.log(0.3), math.log(0.24)], abs=1e-5
    )
    assert kept[2] == [[1, 2, 3, M], [1, 2, M, 4]]
    assert kept[3] == [[1, 2, 3, 4]]
    assert out.stats.nfe.tolist() == [4] and out.stats.sequence_evals.tolist() == [1 + 2 + 2 + 2]
    # a cap of 2 steps stops there: the canvas holds the best beam of step 2
    capped = generate(fl.model(fl.static(spec, P + 4)), torch.tensor([[0]]), SOARBeam(steps=2),
                      gen_length=4)  # fmt: skip
    assert capped.generated.tolist() == [[1, 2, M, M]] and capped.stats.nfe.tolist() == [2]


def test_collapse_keeps_the_best_parallel_child(fl):
    # step 1: A = {0} (p .9), B = {1} (p .3). Step 2: A's best child A+1 scores log(.9 * .8);
    # B sees p .97 and .96 and commits both in parallel (log(.3 * .97 * .96), lower). A parallel
    # branch collapses the row to ONE beam, the parallel child, though A+1 scores higher.
    mask = fl.MASK

    def fn(x, call):
        rows = []
        for b in range(x.shape[0]):
            first, second = bool(x[b, P] != mask), bool(x[b, P + 1] != mask)
            if not first and not second:
                spec = {P: (1, 0.9), P + 1: (2, 0.3)}
            elif first:
                spec = {P + 1: (2, 0.8), P + 2: (3, 0.3)}
            else:
                spec = {P: (5, 0.3), P + 2: (3, 0.97), P + 3: (4, 0.96)}
            rows.append(fl.static(spec, x.shape[1])(x[b : b + 1], call)[0])
        return torch.stack(rows)

    strategy = SOARBeam(record_beams=True)
    out = generate(fl.model(fn), torch.tensor([[0]]), strategy, gen_length=4)
    step2 = strategy.beam_history[1][2]
    assert [b.sequence[P:].tolist() for b in step2] == [[mask, 2, 3, 4]]
    assert step2[0].score == pytest.approx(math.log(0.3 * 0.97 * 0.96), abs=1e-5)
    assert out.generated.tolist() == [[5, 2, 3, 4]]
    assert out.stats.sequence_evals.tolist() == [1 + 2 + 1]


def test_batched_left_padded_rows_equal_rows_alone():
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompts = [torch.tensor([5, 9, 17, 3]), torch.tensor([44, 2]), torch.tensor([8])]
    batch = torch.tensor([[5, 9, 17, 3], [0, 0, 44, 2], [0, 0, 0, 8]])
    mask = (torch.arange(4)[None, :] >= torch.tensor([[0], [2], [3]])).long()
    strategy = SOARBeam(beam_width=3, confidence_threshold=0.9, block_length=4)
    batched = generate(model, batch, strategy, gen_length=8, attention_mask=mask)
    assert (batched.stats.sequence_evals > batched.stats.nfe).all()  # beams were searched
    for r, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], strategy, gen_length=8)
        assert torch.equal(alone.generated[0], batched.generated[r])
        assert alone.stats.nfe.tolist() == [int(batched.stats.nfe[r])]
        assert alone.stats.sequence_evals.tolist() == [int(batched.stats.sequence_evals[r])]


def test_per_row_nfe_is_the_beams_fed():
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    fed = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    prompts = _prompts(3, seed=2)
    out = generate(model, prompts, SOARBeam(beam_width=3, block_length=4), gen_length=8)
    assert len(fed) == out.stats.forward_calls
    for r in range(3):
        mine = [int((x[:, :4] == prompts[r]).all(1).sum()) for x in fed]
        assert sum(mine) == int(out.stats.sequence_evals[r])  # every sequence fed, once
        assert sum(1 for n in mine if n) == int(out.stats.nfe[r])  # every step it took part in
    assert not (out.generated == 127).any()


def test_config_defaults_and_refusals():
    assert SOARBeamConfig().build() == SOARBeam()
    assert (SOARBeam().beam_width, SOARBeam().score, SOARBeam().confidence_threshold) == (
        2, "log_prob", 0.95,
    )  # fmt: skip
    with pytest.raises(ValueError, match="min_parallel_tokens"):
        SOARBeam(min_parallel_tokens=6)
    with pytest.raises(ValueError):
        SOARBeam(score="sum")
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(tiny_bidirectional(seed=0), _prompts(1), SOARBeam(block_length=3), gen_length=8)


def test_a_predicted_mask_id_is_never_committed(fl):
    # offset 1 predicts the [MASK] id with p = .9: committing it would change nothing (the released
    # loop then spends steps on it). x0 is the best real token (token 0, p = .1 / 7, the first of
    # the tied ones), scored by its full-vocabulary probability; the search ends in 2 steps.
    spec = {P: (1, 0.6), P + 1: (fl.MASK, 0.9)}
    strategy = SOARBeam(beam_width=1, confidence_threshold=None, record_beams=True)
    out = generate(fl.model(fl.static(spec, P + 2)), torch.tensor([[0]]), strategy, gen_length=2)
    assert out.generated.tolist() == [[1, 0]] and out.stats.nfe.tolist() == [2]
    score = strategy.beam_history[-1][2][0].score
    assert score == pytest.approx(math.log(0.6) + math.log(0.1 / 7), abs=1e-5)
