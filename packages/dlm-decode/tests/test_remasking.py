"""LLaDA's sampler: schedule, commit order, block boundaries, CFG, Gumbel and EOS options, against
values derived by hand and a plain per-row loop written from the paper and the spec."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlm_decode import LLaDA, StepEvent, generate, gumbel_argmax, select_top_k, transfer_schedule
from layerwise_core import set_seed
from layerwise_core.tiny_models import tiny_bidirectional


def test_transfer_schedule_by_hand():
    # n // steps each step, +1 on the first n % steps steps
    assert transfer_schedule(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert transfer_schedule(torch.tensor([3]), 4).tolist() == [[1, 1, 1, 0]]
    assert transfer_schedule(torch.tensor([32, 0]), 32).tolist() == [[1] * 32, [0] * 32]


def test_select_top_k_per_row_k():
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = select_top_k(conf, cand, torch.tensor([2, 1]))
    # row 0: 0.7 is not a candidate -> 0.9, 0.5; row 1: 0.8
    assert got.tolist() == [[False, True, True, False], [False, False, True, False]]


def _events(out_list):
    def callback(event: StepEvent):
        rows, committed = event.rows.tolist(), event.committed
        out_list.append({r: committed[i].nonzero().flatten().tolist() for i, r in enumerate(rows)})

    return callback


def test_commit_order_and_block_boundaries_by_hand(fl):
    # prompt of 2, gen 4 in 2 blocks of 2, 4 steps -> 1 token per step.
    # confidences by generation offset: 0.5, 0.9 | 0.95, 0.6 (tokens 3, 4 | 5, 1).
    # Block 0 first: offset 1 (0.9) then 0 (0.5); offset 2 (0.95) must wait for block 1.
    spec = {2: (3, 0.5), 3: (4, 0.9), 4: (5, 0.95), 5: (1, 0.6)}
    model = fl.model(fl.static(spec, 6))
    events = []
    out = generate(
        model,
        torch.tensor([[0, 1]]),
        LLaDA(steps=4, block_length=2),
        gen_length=4,
        callback=_events(events),
    )
    assert [e[0] for e in events] == [[3], [2], [4], [5]]
    assert out.generated.tolist() == [[3, 4, 5, 1]]
    assert out.stats.nfe.tolist() == [4] and out.stats.steps_saved.tolist() == [0]


def test_tokens_per_step_follow_the_schedule(fl):
    # one block of 5 in 2 steps: 3 then 2 tokens, highest confidence first
    spec = {1 + i: (i, p) for i, p in enumerate([0.3, 0.8, 0.5, 0.9, 0.4])}
    events = []
    generate(
        fl.model(fl.static(spec, 6)),
        torch.tensor([[2]]),
        LLaDA(steps=2, block_length=5),
        gen_length=5,
        callback=_events(events),
    )
    assert [sorted(e[0]) for e in events] == [[2, 3, 4], [1, 5]]


def reference_llada(model, prompt, steps, gen_length, block_length, temperature=0.0,
                    cfg_scale=0.0, remasking="low_confidence", mask_id=127,
                    leftovers=True):  # fmt: skip
    """LLaDA's sampler as a plain loop from the spec: per-row topk, no vectorisation. As released,
    only positions right of the block are excluded, so a mask left in an earlier block (the model
    predicted [MASK] there) stays a candidate; leftovers=False excludes them too (the contrast)."""
    P = prompt.shape[1]
    x = torch.full((prompt.shape[0], P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        n = (x[:, lo:hi] == mask_id).sum(1).tolist()
        schedule = [[m // per_block + (i < m % per_block) for i in range(per_block)] for m in n]
        for i in range(per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un = x.clone()
                un[prompt_index] = mask_id
                both = model(input_ids=torch.cat([x, un])).logits
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(input_ids=x).logits
            if temperature > 0:
                z = logits.double()
                u = torch.rand(z.shape, dtype=torch.float64)
                x0 = (z.exp() / (-torch.log(u)) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                conf = F.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape)
            conf[:, hi:] = -math.inf
            if not leftovers:
                conf[:, :lo] = -math.inf
            conf = torch.where(mask_index, conf, -math.inf)
            for j in range(x.shape[0]):
                index = torch.topk(conf[j], schedule[j][i]).indices
                x[j, index] = x0[j, index]
    return x


@pytest.mark.parametrize(
    ("steps", "block", "temperature", "cfg", "remasking"),
    [
        (8, 4, 0.0, 0.0, "low_confidence"),
        (4, 8, 0.0, 0.0, "low_confidence"),  # one block: pure diffusion, 2 tokens per step
        (8, 4, 0.0, 1.5, "low_confidence"),  # classifier-free guidance
        (8, 2, 0.7, 0.0, "low_confidence"),  # Gumbel temperature
        (8, 4, 0.0, 0.0, "random"),
    ],
)
@pytest.mark.parametrize("quirks", [True, False])
def test_matches_plain_reference_on_tiny_model(steps, block, temperature, cfg, remasking, quirks):
    model = tiny_bidirectional(seed=0, initializer_range=0.3)
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    set_seed(3)
    want = reference_llada(model, prompt, steps, 8, block, temperature, cfg, remasking)
    set_seed(3)
    strategy = LLaDA(steps, block, temperature, remasking, cfg, reference_quirks=quirks)
    out = generate(model, prompt, strategy, gen_length=8)
    assert torch.equal(out.sequences, want)
    assert out.stats.nfe.tolist() == [steps * (2 if cfg else 1)] * 2


def test_guidance_combination_by_hand(fl):
    # conditional logits favour token 1, unconditional ones favour it more; with w = 1
    # un + 2 (cond - un) = [0 + 2 * 1, 1.5 + 2 * (1.2 - 1.5)] = [2.0, 0.9] -> token 0.
    V, MASK = fl.V, fl.MASK
    cond = torch.full((V,), -5.0)
    cond[0], cond[1] = 1.0, 1.2
    uncond = torch.full((V,), -5.0)
    uncond[0], uncond[1] = 0.0, 1.5

    def fn(x, call):
        unconditional = (x[:, :1] == MASK)[:, :, None]  # the prompt is masked
        row = torch.where(unconditional, uncond, cond)
        return row.expand(-1, x.shape[1], -1).clone()

    model = fl.model(fn)
    out = generate(model, torch.tensor([[3]]), LLaDA(steps=2, block_length=2, cfg_scale=1.0),
                   gen_length=2)  # fmt: skip
    assert out.generated.tolist() == [[0, 0]]
    assert out.stats.nfe.tolist() == [4]  # a guided step costs two evaluations
    assert (model.inputs[0][1, 0] == MASK) and (model.inputs[0][0, 0] == 3)
    plain = generate(
        fl.model(fn), torch.tensor([[3]]), LLaDA(steps=2, block_length=2), gen_length=2
    )
    assert plain.generated.tolist() == [[1, 1]]


def test_gumbel_forms_agree_and_sample_softmax_over_t():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    ours = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(0))
    released = gumbel_argmax(logits, 1.0, gen, reference_quirks=True)
    assert torch.equal(ours, released)  # same u, same argmax
    freq = torch.bincount(ours, minlength=3).double() / ours.numel()
    assert torch.allclose(freq, torch.softmax(logits[0].double(), 0), atol=0.015)
    assert torch.equal(gumbel_argmax(logits, 0.0), logits.argmax(-1))


def test_eos_options(fl):
    # offset 0 predicts EOS with p = 0.9, offset 1 token 2 with p = 0.5
    EOS = fl.EOS
    table = torch.stack([fl.prob_logits(0, 0.2), fl.prob_logits(EOS, 0.9), fl.prob_logits(2, 0.5)])

    def fn(x, call):
        return table[None].expand(x.shape[0], -1, -1).clone()

    def run(**kw):
        events = []
        out = generate(fl.model(fn), torch.tensor([[1]]), LLaDA(steps=2, block_length=2, **kw),
                       gen_length=2, callback=_events(events))  # fmt: skip
        return out.generated.tolist(), [e[0] for e in events]

    assert run() == ([[EOS, 2]], [[1], [2]])  # plain: EOS is most confident
    assert run(logits_eos_inf=True)[0][0][0] != EOS  # EOS can no longer be sampled
    # ours: EOS predictions go last
    assert run(confidence_eos_eot_inf=True) == ([[EOS, 2]], [[2], [1]])
    # released at T = 0: EOS leaves the confidence softmax (logits_with_noise is logits): p = 0
    assert run(confidence_eos_eot_inf=True, reference_quirks=True) == ([[EOS, 2]], [[2], [1]])


def test_errors_name_the_fix():
    model = tiny_bidirectional(seed=0)
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(model, torch.tensor([[1, 2]]), LLaDA(steps=4, block_length=3), gen_length=8)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate(model, torch.tensor([[1, 2]]), LLaDA(steps=3, block_length=4), gen_length=8)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="mask"):
        generate(model, torch.tensor([[1, 127]]))


@pytest.mark.parametrize("quirks", [True, False])
def test_mask_leftover_is_redecoded_in_the_next_block_by_hand(fl, quirks):
    # prompt [0], gen 4 in 2 blocks of 2, 4 steps: 1 commit per step. Position 1 predicts [MASK]
    # (p 0.9) at the first forward, then token 3 (0.95); position 2: token 4 (0.5); block 1:
    # token 5 (0.6), token 1 (0.4). Step 1 takes position 1 -> stays [MASK]; step 2 commits it;
    # block 0 ends with position 2 masked. Block 1 (schedule 1, 1 from its own 2 masks): step 3
    # picks 0.6 over the leftover's 0.5 and 0.4, step 4 the leftover (0.5) over 0.4.
    def fn(x, call):
        first = (fl.MASK, 0.9) if call == 1 else (3, 0.95)
        spec = {1: first, 2: (4, 0.5), 3: (5, 0.6), 4: (1, 0.4)}
        return fl.static(spec, 5)(x, call)

    out = generate(fl.model(fn), torch.tensor([[0]]),
                   LLaDA(steps=4, block_length=2, reference_quirks=quirks), gen_length=4)  # fmt: skip
    assert out.generated.tolist() == [[3, 4, 5, fl.MASK]]  # current block only: [3, MASK, 5, 1]


@pytest.mark.parametrize("quirks", [True, False])
def test_mask_predicting_model_matches_the_released_loop(fl, quirks):
    # Forward 1: offsets 0 and 1 predict [MASK], forward 3: offset 2; the released loop re-decodes
    # the leftovers of block 0 in block 1 (they compete for its 1-per-step schedule).
    P = 5
    plan = {1: [P, P + 1], 3: [P + 2], 6: [P + 6]}
    prompt = torch.randint(0, 100, (2, P), generator=torch.Generator().manual_seed(1))
    inner = tiny_bidirectional(seed=0, initializer_range=0.3)
    want = reference_llada(fl.predicts_mask(inner, plan), prompt, 8, 8, 4)
    old = reference_llada(fl.predicts_mask(inner, plan), prompt, 8, 8, 4, leftovers=False)
    assert not torch.equal(want, old)  # the scenario really tells the two apart
    out = generate(fl.predicts_mask(inner, plan), prompt,
                   LLaDA(steps=8, block_length=4, reference_quirks=quirks), gen_length=8)  # fmt: skip
    assert torch.equal(out.sequences, want)
    assert out.stats.nfe.tolist() == [8, 8]
