"""NAP's parallel-forced decoding: LLaDA's schedule at one segment, exactly k commits per step
(derived by hand on fixed-logits models), the budget split over segments, batching."""

import pytest
import torch

from dlm_decode import LLaDA, generate
from dlm_decode.parallel_forced import (
    ParallelForced,
    ParallelForcedConfig,
    decode_parallel_forced,
    segment_bounds,
    split_budget,
)
from layerwise_core.tiny_models import tiny_bidirectional

P = 1  # prompt length of the fixed-logits tests


def _commits(events):
    """Callback recording the generation offsets committed at each step (row 0)."""
    return lambda e: events.append((e.committed[0].nonzero().flatten() - P).tolist())


def _spec(confidences):
    """{absolute position: (token, p)} from the p of each generation offset; token = offset."""
    return {P + i: (i % 6, p) for i, p in enumerate(confidences)}


@pytest.mark.parametrize("k, gen_length", [(1, 8), (2, 8), (4, 8), (3, 9)])
def test_one_segment_is_llada_with_one_block_and_k_per_step(k, gen_length):
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompts = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    ours = generate(model, prompts, ParallelForced(tokens_per_step=k), gen_length=gen_length)
    llada = LLaDA(steps=gen_length // k, block_length=gen_length, remasking="low_confidence")
    ref = generate(model, prompts, llada, gen_length=gen_length)
    assert torch.equal(ours.sequences, ref.sequences)
    assert ours.stats.nfe.tolist() == ref.stats.nfe.tolist() == [gen_length // k] * 2
    assert ours.stats.step_budget == gen_length // k


def test_sampling_draws_the_same_gumbel_noise_as_llada():
    model = tiny_bidirectional(seed=2, initializer_range=0.5)
    prompts = torch.randint(0, 100, (2, 3), generator=torch.Generator().manual_seed(3))
    ours = generate(model, prompts, ParallelForced(temperature=0.7), gen_length=6,
                    generator=torch.Generator().manual_seed(5))  # fmt: skip
    ref = generate(model, prompts, LLaDA(steps=6, block_length=6, temperature=0.7), gen_length=6,
                   generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(ours.sequences, ref.sequences)


def test_exactly_k_per_step_in_confidence_order(fl):
    # confidences by offset; k = 3 commits the 3 most confident, then the next 3
    conf = [0.3, 0.9, 0.5, 0.8, 0.4, 0.95]
    events = []
    model = fl.model(fl.static(_spec(conf), P + 6))
    out = generate(model, torch.tensor([[0]]), ParallelForced(tokens_per_step=3), gen_length=6,
                   callback=_commits(events))  # fmt: skip
    assert [sorted(e) for e in events] == [[1, 3, 5], [0, 2, 4]]
    assert out.stats.nfe.tolist() == [2] and model.calls == 2
    assert out.generated[0].tolist() == [i % 6 for i in range(6)]


def test_a_short_last_step_takes_the_remainder(fl):
    # 10 masks, k = 4: ours 4, 4, 2 (k fixed); LLaDA's 3-step schedule spreads it 4, 3, 3
    conf = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 0.95]
    ours, ref = [], []
    generate(fl.model(fl.static(_spec(conf), P + 10)), torch.tensor([[0]]),
             ParallelForced(tokens_per_step=4), gen_length=10, callback=_commits(ours))  # fmt: skip
    generate(fl.model(fl.static(_spec(conf), P + 10)), torch.tensor([[0]]),
             LLaDA(steps=3, block_length=10), gen_length=10, callback=_commits(ref))  # fmt: skip
    assert [sorted(e) for e in ours] == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 1]]
    assert [len(e) for e in ref] == [4, 3, 3]


def test_segments_share_the_budget_and_commit_by_confidence_inside(fl):
    # two segments of 4; k = 2 gives one commit per segment per step, in each segment's own
    # confidence order although segment 1's positions are all more confident than segment 0's
    conf = [0.2, 0.5, 0.3, 0.4, 0.9, 0.6, 0.95, 0.7]
    events = []
    generate(fl.model(fl.static(_spec(conf), P + 8)), torch.tensor([[0]]),
             ParallelForced(tokens_per_step=2, segments=2), gen_length=8,
             callback=_commits(events))  # fmt: skip
    assert [sorted(e) for e in events] == [[1, 6], [3, 4], [2, 7], [0, 5]]


def test_summary_last_takes_only_the_leftover_budget(fl):
    # reasoning 3 positions, summary 2, k = 2: R R | R S | S
    conf = [0.5, 0.6, 0.7, 0.99, 0.98]
    events = []
    generate(fl.model(fl.static(_spec(conf), P + 5)), torch.tensor([[0]]),
             ParallelForced(tokens_per_step=2, segments=(3, 2), summary_last=True),
             gen_length=5, callback=_commits(events))  # fmt: skip
    assert [sorted(e) for e in events] == [[1, 2], [0, 3], [4]]


def test_split_budget_by_hand():
    remaining = torch.tensor([[5, 3, 0], [2, 2, 2], [1, 0, 1], [4, 4, 4], [0, 0, 0]])
    budget = torch.tensor([4, 1, 5, 6, 3])
    assert split_budget(remaining, budget).tolist() == [
        [3, 1, 0],  # 2.5, 1.5, 0: the leftover goes to the leftmost tie
        [1, 0, 0],  # fewer commits than segments: the leftmost first
        [1, 0, 1],  # a budget above the masks takes them all
        [2, 2, 2],
        [0, 0, 0],
    ]


def test_segments_rotate_when_k_is_below_their_number(fl):
    # k = 1 over 3 segments of 2: the segment with the most masks left goes next (leftmost tie)
    conf = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    events = []
    generate(fl.model(fl.static(_spec(conf), P + 6)), torch.tensor([[0]]),
             ParallelForced(segments=3), gen_length=6, callback=_commits(events))  # fmt: skip
    assert events == [[1], [3], [5], [0], [2], [4]]


def test_segment_bounds():
    assert segment_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert segment_bounds(6, (1, 5)) == [(0, 1), (1, 6)]
    with pytest.raises(ValueError, match="sum to gen_length 6"):
        segment_bounds(6, (2, 2))
    with pytest.raises(ValueError, match="between 1 and gen_length"):
        segment_bounds(2, 3)


def test_batched_rows_with_padding_equal_rows_alone():
    model = tiny_bidirectional(seed=1, initializer_range=0.5)
    prompts = torch.randint(1, 100, (3, 5), generator=torch.Generator().manual_seed(2))
    attention = torch.ones_like(prompts)
    attention[0, :2] = 0
    attention[2, :4] = 0
    prompts = prompts.masked_fill(attention == 0, 0)
    strategy = ParallelForced(tokens_per_step=3, segments=3)
    batched = generate(model, prompts, strategy, gen_length=10, attention_mask=attention)
    assert batched.stats.nfe.tolist() == [4, 4, 4]  # ceil(10 / 3)
    for r in range(3):
        keep = attention[r].bool()
        alone = generate(model, prompts[r : r + 1, keep], strategy, gen_length=10)
        assert torch.equal(alone.generated[0], batched.generated[r])
        assert alone.stats.nfe.tolist() == [int(batched.stats.nfe[r])]
    assert not (batched.generated == 127).any()


def test_a_masked_prediction_is_offered_again_and_nfe_stays_fixed(fl):
    # offset 0 predicts [MASK] at the first call (the most confident), then token 4 at p = 0.9
    def fn(x, call):
        table = torch.stack([fl.prob_logits(i % 6, 0.5) for i in range(P + 3)])
        table[P] = fl.prob_logits(fl.MASK, 0.99) if call == 1 else fl.prob_logits(4, 0.9)
        return table[None].expand(x.shape[0], -1, -1).clone()

    out = generate(fl.model(fn), torch.tensor([[0]]), ParallelForced(), gen_length=3)
    assert out.stats.nfe.tolist() == [3]  # ceil(3 / 1): the wasted commit is not made up for
    assert out.generated[0, 0] == 4  # still masked after step 1, committed at step 2
    assert (out.generated == fl.MASK).sum() == 1


def test_constraints_are_not_decoded_and_shorten_the_schedule(fl):
    conf = [0.5, 0.6, 0.7, 0.8]
    model = fl.model(fl.static(_spec(conf), P + 4))
    out = generate(model, torch.tensor([[0]]), ParallelForced(tokens_per_step=2), gen_length=4,
                   constraints={1: 5})  # fmt: skip
    assert out.stats.nfe.tolist() == [2] and out.stats.step_budget == 2  # ceil(3 / 2)
    assert out.generated[0].tolist() == [0, 5, 2, 3]


def test_config_builds_the_strategy_and_refuses_bad_segments():
    built = ParallelForcedConfig(tokens_per_step=2, segments=[3, 5]).build()
    assert built == ParallelForced(tokens_per_step=2, segments=(3, 5))
    with pytest.raises(ValueError, match="segments"):
        ParallelForcedConfig(segments=0)
    with pytest.raises(ValueError, match="tokens_per_step"):
        ParallelForced(tokens_per_step=0)
    with pytest.raises(ValueError, match="at least two segments"):
        generate(tiny_bidirectional(), torch.tensor([[1]]),
                 ParallelForced(summary_last=True), gen_length=2)  # fmt: skip


def test_decode_function_runs_on_a_canvas_directly(fl):
    from dlm_decode.adapters import as_masked_diffusion_lm
    from dlm_decode.canvas import Canvas

    conf = [0.5, 0.9]
    canvas = Canvas(as_masked_diffusion_lm(fl.model(fl.static(_spec(conf), P + 2))),
                    torch.tensor([[0]]), 2)  # fmt: skip
    decode_parallel_forced(canvas, tokens_per_step=2)
    assert canvas.x[0, P:].tolist() == [0, 1] and canvas.nfe.tolist() == [1]
