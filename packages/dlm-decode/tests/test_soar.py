"""SOAR: parallel branch, position beam search, scores, de-duplication and beam switching, by hand."""

import torch

from dlm_decode import SOAR, generate
from layerwise_core.tiny_models import tiny_bidirectional

P = 1


def _commits(events):
    return lambda e: events.append(e.committed[0].nonzero().flatten().tolist())


def test_parallel_then_beam_then_dedup_by_hand(fl):
    # offsets 0..3 with p = 0.97, 0.5, 0.96, 0.4 (static). Step 1: 0.97 and 0.96 > 0.95 -> both
    # committed in parallel, beam collapses. Step 2: no p > 0.95 -> two candidates (offset 1,
    # score 1.93 + 0.5; offset 3, 1.93 + 0.4). Step 3: each completes the other position; both
    # give the same sequence, de-duplicated to one beam. Step 4 would find no masks: 3 NFE.
    spec = {P + 0: (2, 0.97), P + 1: (1, 0.5), P + 2: (3, 0.96), P + 3: (4, 0.4)}
    events = []
    out = generate(fl.model(fl.static(spec, P + 4)), torch.tensor([[0]]),
                   SOAR(steps=4, block_length=4), gen_length=4, callback=_commits(events))  # fmt: skip
    assert events == [[P + 0, P + 2], [P + 1], [P + 3]]
    assert out.generated.tolist() == [[2, 1, 3, 4]]
    assert out.stats.nfe.tolist() == [3]
    assert out.stats.sequence_evals.tolist() == [1 + 1 + 2]  # two beams scored at step 3


def test_the_canvas_follows_the_best_beam(fl):
    # As above, but the context changes the predictions: after beam A (offset 1 = token 1) the
    # last position has p = 0.1 (A' scores 2.43 + 0.1); after beam B (offset 3) offset 1 predicts
    # token 5 with p = 0.9 (B' scores 2.33 + 0.9 = 3.23). B' wins: offset 1 holds 5, not A's 1.
    mask = fl.MASK

    def fn(x, call):
        rows = []
        for b in range(x.shape[0]):
            spec = {P + 0: (2, 0.97), P + 1: (1, 0.5), P + 2: (3, 0.96), P + 3: (4, 0.4)}
            if x[b, P + 1] != mask and x[b, P + 3] == mask:
                spec[P + 3] = (4, 0.1)
            if x[b, P + 3] != mask and x[b, P + 1] == mask:
                spec[P + 1] = (5, 0.9)
            rows.append(fl.static(spec, x.shape[1])(x[b : b + 1], call)[0])
        return torch.stack(rows)

    events = []
    out = generate(fl.model(fn), torch.tensor([[0]]), SOAR(steps=4, block_length=4),
                   gen_length=4, callback=_commits(events))  # fmt: skip
    assert out.generated.tolist() == [[2, 5, 3, 4]]
    assert events[1] == [P + 1]  # step 2 shows beam A ...
    assert events[2] == [P + 1, P + 3]  # ... step 3 switches to B': offset 1 rewritten, 3 added


def test_block_order_and_step_cap(fl):
    # two blocks of 2: block 1's confident positions wait for block 0 to be full
    spec = {P + 0: (1, 0.3), P + 1: (2, 0.2), P + 2: (3, 0.99), P + 3: (4, 0.98)}
    events = []
    out = generate(fl.model(fl.static(spec, P + 4)), torch.tensor([[0]]),
                   SOAR(steps=4, block_length=2), gen_length=4, callback=_commits(events))  # fmt: skip
    assert events[0] == [P + 0] and events[-1] == [P + 2, P + 3]
    assert out.stats.nfe.tolist() == [3]
    # the released loop stops after `steps` forwards even with masks left
    capped = generate(fl.model(fl.static(spec, P + 4)), torch.tensor([[0]]),
                      SOAR(steps=2, block_length=2), gen_length=4)  # fmt: skip
    assert (capped.generated == fl.MASK).sum() == 2


def test_batched_rows_keep_their_own_beams():
    model = tiny_bidirectional(seed=0, initializer_range=0.5)
    prompts = torch.randint(0, 100, (3, 4), generator=torch.Generator().manual_seed(1))
    strategy = SOAR(steps=8, block_length=4)
    batched = generate(model, prompts, strategy, gen_length=8)
    for r in range(3):
        alone = generate(model, prompts[r : r + 1], strategy, gen_length=8)
        assert torch.equal(alone.sequences[0], batched.sequences[r])
        assert alone.stats.nfe.tolist() == [int(batched.stats.nfe[r])]
    assert not (batched.generated == 127).any()
