"""Prophet: the staged exit rule, the all-in commit with that step's argmax, the answer anchor, per-row
exits in a batch, and the anchor-free extension, on fixed logits derived by hand."""

from typing import ClassVar

import pytest
import torch

from dlm_decode import LLaDA, Prophet, StagedThresholds, answer_anchor, generate
from layerwise_core.tiny_models import tiny_bidirectional

GEN = 8
P = 1
OFFSETS = [-0.25, -0.125, 0.0, 0.125, 0.25]  # exact in binary: five gaps average to g exactly


def scripted(fl, gaps_by_row):
    """Logits at call c: every position's top token is c % 5 (so the fill step is visible), with
    top-1/top-2 gap `gaps_by_row[row][c-1] + offset` on the answer region (offsets 2..6) and
    10 + offset / 2 elsewhere (more confident: those commit first; p stays below 1 in fp32)."""

    def fn(x, call):
        rows = []
        for b in range(x.shape[0]):
            script = gaps_by_row[int(x[b, 0])]
            g = script[min(call, len(script)) - 1]
            logits = torch.full((x.shape[1], fl.V), -30.0)
            for pos in range(x.shape[1]):
                offset = pos - P
                gap = g + OFFSETS[offset - 2] if 2 <= offset < 7 else 10.0 + offset / 2
                logits[pos, call % 5] = gap
                logits[pos, (call + 1) % 5] = 0.0
            rows.append(logits)
        return torch.stack(rows)

    return fn


def test_staged_thresholds_boundaries():
    tau = StagedThresholds()
    assert [tau(p) for p in (0.0, 0.329, 0.33, 0.669, 0.67, 1.0)] == [7.5, 7.5, 5.0, 5.0, 2.5, 2.5]


@pytest.mark.parametrize("quirks", [False, True])  # gap from the fused op / from topk as released
def test_exits_exactly_when_the_staged_rule_says_and_fills_with_that_steps_argmax(fl, quirks):
    # steps = 8: progress 1/8, 2/8 (early, tau 7.5), 3/8, 4/8, 5/8 (mid, tau 5.0), 6/8 ... (late)
    # mean gaps 7.4, 7.0, 4.9, 4.99, 5.0: the first step with gap >= tau is step 5 (inclusive).
    gaps = {0: [7.4, 7.0, 4.9, 4.99, 5.0, 9.0, 9.0, 9.0]}
    events = []
    strategy = Prophet(
        steps=8, block_length=8, answer_start=2, record_gaps=True, reference_quirks=quirks
    )
    out = generate(
        fl.model(scripted(fl, gaps)),
        torch.tensor([[0]]),
        strategy,
        gen_length=GEN,
        callback=lambda e: events.append(e.committed[0].nonzero().flatten().tolist()),
    )
    assert out.exit_step.tolist() == [5]
    assert out.stats.nfe.tolist() == [5] and out.stats.steps_saved.tolist() == [3]
    # steps 1-4 commit offsets 7, 1, 0 (gaps 13.5, 10.5, 10) then the region's largest (offset 6)
    assert events[:4] == [[P + 7], [P + 1], [P + 0], [P + 6]]
    # step 5 fills the other four positions, all in, with step 5's argmax (5 % 5 = 0)
    assert events[4] == [P + 2, P + 3, P + 4, P + 5]
    assert out.generated.tolist() == [[3, 2, 0, 0, 0, 0, 4, 1]]
    assert [round(float(g[0]), 6) for _, g in strategy.gap_history] == [7.4, 7.0, 4.9, 4.99, 5.0]


def test_late_threshold_and_no_exit_when_gap_stays_low(fl):
    gaps = {0: [2.4] * 5 + [2.5, 9.0, 9.0]}  # step 6 (progress 0.75, tau 2.5) exits
    out = generate(fl.model(scripted(fl, gaps)), torch.tensor([[0]]),
                   Prophet(steps=8, block_length=8, answer_start=2), gen_length=GEN)  # fmt: skip
    assert out.exit_step.tolist() == [6]
    never = {0: [2.4] * 8}
    out = generate(fl.model(scripted(fl, never)), torch.tensor([[0]]),
                   Prophet(steps=8, block_length=8, answer_start=2), gen_length=GEN)  # fmt: skip
    assert out.exit_step.tolist() == [-1] and out.stats.nfe.tolist() == [8]


def test_without_anchor_the_released_rule_never_exits(fl):
    gaps = {0: [50.0] * 8}
    baseline = generate(fl.model(scripted(fl, gaps)), torch.tensor([[0]]),
                        LLaDA(steps=8, block_length=4), gen_length=GEN)  # fmt: skip
    prophet = generate(fl.model(scripted(fl, gaps)), torch.tensor([[0]]),
                       Prophet(steps=8, block_length=4), gen_length=GEN)  # fmt: skip
    assert torch.equal(prophet.sequences, baseline.sequences)
    assert prophet.exit_step.tolist() == [-1] and prophet.stats.nfe.tolist() == [8]


def test_batched_rows_exit_on_their_own_and_equal_per_row_runs(fl):
    gaps = {0: [9.0] * 8, 1: [1.0] * 8, 2: [1.0, 1.0, 1.0, 1.0, 6.0, 6.0, 6.0, 6.0]}
    prompts = torch.tensor([[0], [1], [2]])
    strategy = Prophet(steps=8, block_length=4, answer_start=2)
    batched = generate(fl.model(scripted(fl, gaps)), prompts, strategy, gen_length=GEN)
    assert batched.exit_step.tolist() == [1, -1, 5]
    assert batched.stats.nfe.tolist() == [1, 8, 5]
    for r in range(3):
        alone = generate(fl.model(scripted(fl, gaps)), prompts[r : r + 1], strategy, gen_length=GEN)
        assert torch.equal(alone.sequences[0], batched.sequences[r])
        assert alone.exit_step.tolist() == [int(batched.exit_step[r])]
    # the released code decides on batch row 0 for everyone
    quirky = Prophet(steps=8, block_length=4, answer_start=2, reference_quirks=True)
    out = generate(fl.model(scripted(fl, gaps)), prompts, quirky, gen_length=GEN)
    assert out.exit_step.tolist() == [1, 1, 1]


def test_anchor_free_regions_are_ours(fl):
    # g = 1: gaps by offset 10, 10.5 | 0.75, 0.875, 1, 1.125, 1.25 | 13.5 (offsets 0-1 | 2-6 | 7)
    gaps = {0: [1.0] * 8}

    def exit_step(region, tau):
        strategy = Prophet(steps=8, block_length=4, region=region, thresholds=StagedThresholds(
            tau, tau, tau))  # fmt: skip
        out = generate(fl.model(scripted(fl, gaps)), torch.tensor([[0]]), strategy, gen_length=GEN)
        return int(out.exit_step[0])

    # "block": masked positions of block 0 at step 1: (10 + 10.5 + 0.75 + 0.875) / 4 = 5.53
    assert exit_step("block", 5.0) == 1
    # 5.53 < 5.6; then (10 + 0.75 + 0.875) / 3 = 3.875, 0.8125, 0.75; block 1: 4.22, 1.125, ...
    assert exit_step("block", 5.6) == -1
    # "masked": every masked position, step 1: 39 / 8 = 4.875; step 2: 28.5 / 7 = 4.07, ...
    assert exit_step("masked", 4.8) == 1
    assert exit_step("masked", 4.9) == -1


class _WordTokenizer:
    vocab: ClassVar[dict[str, list[int]]] = {" The": [3], " answer": [4], " is": [5]}

    def encode(self, text, add_special_tokens=False):
        return self.vocab[text]


def test_answer_anchor_as_released(fl):
    constraints, start = answer_anchor("2:The|3:answer|4:is", _WordTokenizer())
    assert constraints == {2: 3, 3: 4, 4: 5} and start == 6  # max offset + 2
    assert answer_anchor({2: "The"}, _WordTokenizer()) == ({2: 3}, 4)
    with pytest.raises(ValueError, match="offset:word"):
        answer_anchor("The answer", _WordTokenizer())
    model = fl.model(fl.static({}, P + GEN))
    out = generate(model, torch.tensor([[1]]), LLaDA(steps=4, block_length=8, cfg_scale=1.0),
                   gen_length=GEN, constraints=constraints)  # fmt: skip
    assert out.generated[0, 2:5].tolist() == [3, 4, 5]  # forced, never masked
    first_call = model.inputs[0]
    assert first_call[0, P + 2 : P + 5].tolist() == [3, 4, 5]
    assert (first_call[1, P + 2 : P + 5] == fl.MASK).all()  # guidance masks them like the prompt


@torch.no_grad()
def reference_prophet(model, prompt, steps, gen_length, block_length, answer_start, tau,
                      mask_id=127, leftovers=True):  # fmt: skip
    """Prophet's `generate` (one row, T = 0, low confidence) as a plain loop from the paper and the
    released description: LLaDA's blocks, and before each commit the mean top-2 logit gap of the 5
    answer positions against tau(step / steps); on exit every mask takes this step's argmax. As
    released, only positions right of the block are excluded from the commit (leftovers=False:
    left of it too, the contrast)."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    per_block, step = steps // (gen_length // block_length), 0
    answer = list(range(P + answer_start, min(P + gen_length, P + answer_start + 5)))
    for b in range(gen_length // block_length):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        n = int((x[0, lo:hi] == mask_id).sum())
        schedule = [n // per_block + (i < n % per_block) for i in range(per_block)]
        for i in range(per_block):
            step += 1
            logits = model(input_ids=x).logits[0]
            x0 = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, x0[:, None]).squeeze(-1)
            top = logits[answer].topk(2, dim=-1).values
            if float((top[:, 0] - top[:, 1]).mean()) >= tau(step / steps):
                masked = x[0] == mask_id
                x[0, masked] = x0[masked]
                return x, step
            conf[hi:] = -float("inf")
            if not leftovers:
                conf[:lo] = -float("inf")
            conf[x[0] != mask_id] = -float("inf")
            index = conf.topk(schedule[i]).indices
            x[0, index] = x0[index]
    return x, steps


@pytest.mark.parametrize(("quirks", "late"), [(False, 0.0), (True, 1e9)])  # exit: step 6 / never
def test_mask_predicting_model_matches_the_released_loop(fl, quirks, late):
    # A tiny model that predicts [MASK] at offsets 0, 1 on forward 1 and 2 on forward 3 (leftovers
    # of block 0, candidates in block 1 as released) and at block 1's offsets 4-7 on forward 6. late = 0: the
    # rule exits at step 6 (first progress >= 0.67) and the all-in commit writes that step's
    # argmax, [MASK], there. late = 1e9: no exit; the leftovers compete in block 1's steps.
    Pn = 5
    plan = {1: [Pn, Pn + 1], 3: [Pn + 2], 6: [Pn + 4, Pn + 5, Pn + 6, Pn + 7]}
    inner = tiny_bidirectional(seed=0, initializer_range=0.3)
    tau = StagedThresholds(early=1e9, mid=1e9, late=late)
    prompts = torch.randint(0, 100, (2, Pn), generator=torch.Generator().manual_seed(1))
    differs = []
    for r, prompt in enumerate(prompts):
        run = dict(steps=8, gen_length=8, block_length=4, answer_start=2, tau=tau)
        want, exit_step = reference_prophet(fl.predicts_mask(inner, plan), prompt[None], **run)
        old, _ = reference_prophet(fl.predicts_mask(inner, plan), prompt[None], **run,
                                   leftovers=False)  # fmt: skip
        differs.append(not torch.equal(want, old))
        strategy = Prophet(steps=8, block_length=4, answer_start=2, thresholds=tau,
                           reference_quirks=quirks)  # fmt: skip
        out = generate(fl.predicts_mask(inner, plan), prompt[None], strategy, gen_length=8)
        assert torch.equal(out.sequences, want), r
        if late == 0:
            assert exit_step == 6 and out.exit_step.tolist() == [6]
            assert int((want[0, Pn + 4 :] == 127).sum()) >= 3  # step 5 committed at most one
        else:
            assert exit_step == 8 and out.exit_step.tolist() == [-1]
    if late > 0:
        assert any(differs)  # the scenario tells re-decoding apart from the current block only
