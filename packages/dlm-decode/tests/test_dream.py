"""Dream's sampler: the flooring of the transfer count, the four confidence algorithms by hand, and the
whole loop against a plain loop written from the spec (logit shift, RNG order, top-p, alg_temp)."""

import pytest
import torch
import torch.distributions as dists
import torch.nn.functional as F

from dlm_decode import Dream, dream_transfer_count, generate, make_strategy
from layerwise_core import set_seed
from layerwise_core.tiny_models import tiny_shifted_bidirectional


def test_flooring_quirk_steps_equal_length():
    # steps = gen_length = 256: int(256 * (1 - s/t)) = int(0.999) = 0 at the first step and the last
    # step takes the 2 that the flooring left behind.
    steps = 256
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    n, counts = torch.tensor([256]), []
    for i in range(steps):
        k = dream_transfer_count(n, i, steps, timesteps)
        counts.append(int(k))
        n = n - k
    assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == 256


def test_flooring_in_a_run(fl):
    events = []
    out = generate(
        fl.model(fl.static({}, 17), logit_shift=1),
        torch.tensor([[0]]),
        Dream(steps=16, alg="maskgit_plus"),
        gen_length=16,
        callback=lambda e: events.append(int(e.committed.sum())),
    )
    assert events[0] == 0 and events[-1] == 2 and sum(events) == 16
    assert out.stats.nfe.tolist() == [16]


def _probs(*head):
    rest = (1 - sum(head)) / (8 - len(head))
    return torch.tensor([*head] + [rest] * (8 - len(head)), dtype=torch.float64).log().float()


@pytest.mark.parametrize(
    ("alg", "first"),
    [("maskgit_plus", 0), ("topk_margin", 1), ("entropy", 2)],
)
def test_confidence_algorithms_by_hand(fl, alg, first):
    # A = (0.5, 0.45, ...): highest p. B = (0.4, 0.1, ...): largest margin 0.3.
    # E = (0.48, 0.48, ...): lowest entropy (0.905 nats vs A's 0.945). With 3 masks and 2 steps the
    # first step commits int(3 * (1 - 0.5005)) = 1 position: the most confident by each measure.
    table = torch.stack([_probs(0.5, 0.45), _probs(0.4, 0.1), _probs(0.48, 0.48), _probs(0.2)])

    def fn(x, call):  # Dream-style: output i scores token i + 1
        return table[None].expand(x.shape[0], -1, -1).clone()

    events = []
    generate(
        fl.model(fn, logit_shift=1),
        torch.tensor([[1]]),
        Dream(steps=2, alg=alg),
        gen_length=3,
        callback=lambda e: events.append(e.committed[0].nonzero().flatten().tolist()),
    )
    # output i scores position i + 1: A, B, E (outputs 0-2) score generation offsets 0, 1, 2
    assert events[0] == [1 + first]
    assert len(events[1]) == 2


def reference_dream(model, prompt, gen_length, steps, alg, temperature=0.0, top_p=None,
                    alg_temp=None, eps=1e-3, mask_id=127, block_length=None):  # fmt: skip
    """Dream's `_sample` as a plain loop from the spec (no padding). With block_length: the blocks of
    Fast-dLLM's `generation_utils_block.py` without its cache: steps / num_blocks steps per block,
    the time grid restarted in each block, only the block's masks eligible."""
    x = F.pad(prompt, (0, gen_length), value=mask_id)
    P = prompt.shape[1]
    block_length = block_length or gen_length
    per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        x = _reference_dream_block(model, x, lo, hi, per_block, alg, temperature, top_p, alg_temp,
                                   eps, mask_id)  # fmt: skip
    return x


def _reference_dream_block(model, x, lo, hi, steps, alg, temperature, top_p, alg_temp, eps,
                           mask_id):  # fmt: skip
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        mask_index[:, :lo] = False
        mask_index[:, hi:] = False
        logits = model(input_ids=x).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]

        def sample(z, kind):
            if temperature > 0:
                z = z / temperature
            if top_p is not None and top_p < 1:
                ordered, index = torch.sort(z, descending=True)
                cum = torch.cumsum(F.softmax(ordered, -1), -1)
                remove = cum > top_p
                remove[..., 1:] = remove[..., :-1].clone()
                remove[..., 0] = False
                drop = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, index, remove)
                z = z.masked_fill(drop, torch.finfo(z.dtype).min)
            probs = torch.softmax(z, -1)
            if temperature > 0:
                x0 = dists.Categorical(probs=probs).sample()
                conf = probs.gather(-1, x0[:, None]).squeeze(-1)
            else:
                conf, x0 = probs.max(-1)
            if kind == "margin":
                top = torch.sort(probs, -1, descending=True).values
                conf = top[:, 0] - top[:, 1]
            if kind == "entropy":
                conf = (probs * torch.log(probs + 1e-10)).sum(-1)
            return conf, x0

        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + mask_id
            reveal = torch.rand(*x0.shape) < p_transfer
            _, x0[reveal] = sample(mask_logits[reveal], None)
            x[mask_index] = x0
            continue
        conf, x0 = sample(mask_logits, {"topk_margin": "margin", "entropy": "entropy"}.get(alg))
        n = mask_index.sum() / mask_index.shape[0]
        k = int(n * (1 - s / t)) if i < steps - 1 else int(n)
        full = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full[mask_index] = conf
        if k > 0:
            if alg_temp is None or alg_temp == 0:
                _, index = torch.topk(full, k)
            else:
                index = torch.multinomial(F.softmax(full / alg_temp, -1), num_samples=k)
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0
            rows = torch.arange(x.shape[0])[:, None].expand_as(index)
            x[rows, index] = x_[rows, index]
    return x


@pytest.mark.parametrize(
    ("alg", "temperature", "top_p", "alg_temp"),
    [
        ("origin", 0.0, None, None),
        ("origin", 0.8, 0.9, None),
        ("maskgit_plus", 0.0, None, None),
        ("topk_margin", 0.0, None, None),
        ("entropy", 0.2, 0.95, None),  # Dream's README demo
        ("entropy", 0.0, None, 0.5),  # positions drawn from softmax(confidence / alg_temp)
    ],
)
def test_matches_plain_reference(alg, temperature, top_p, alg_temp):
    model = tiny_shifted_bidirectional(seed=0, initializer_range=0.3)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(5))
    set_seed(11)
    want = reference_dream(model, prompt, 10, 5, alg, temperature, top_p, alg_temp)
    set_seed(11)
    strategy = Dream(steps=5, alg=alg, temperature=temperature, top_p=top_p, alg_temp=alg_temp)
    out = generate(model, prompt, strategy, gen_length=10)
    assert torch.equal(out.sequences, want)


def test_batched_left_padded_equals_per_row():
    model = tiny_shifted_bidirectional(seed=0, initializer_range=0.3)
    prompts = [torch.tensor([5, 9, 17, 3]), torch.tensor([44, 2])]
    batch = torch.tensor([[5, 9, 17, 3], [0, 0, 44, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    strategy = Dream(steps=4, alg="maskgit_plus")
    batched = generate(model, batch, strategy, gen_length=8, attention_mask=mask)
    for r, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], strategy, gen_length=8)
        assert torch.equal(alone.generated[0], batched.generated[r])


def test_dream_refuses_a_generator():
    with pytest.raises(ValueError, match="set_seed"):
        generate(tiny_shifted_bidirectional(), torch.tensor([[1]]), Dream(steps=2),
                 gen_length=2, generator=torch.Generator())  # fmt: skip


@pytest.mark.parametrize(
    ("alg", "temperature", "top_p", "alg_temp"),
    [
        ("origin", 0.8, 0.9, None),  # one rand per step over the eligible masks
        ("entropy", 0.0, None, 0.5),  # positions drawn by multinomial
    ],
)
def test_one_block_of_gen_length_is_todays_decode(alg, temperature, top_p, alg_temp):
    # block_length = gen_length (and None) must be the unblocked sampler bit for bit, random draws
    # included; blocks of 5 must match the blocked plain loop.
    model = tiny_shifted_bidirectional(seed=0, initializer_range=0.3)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(5))
    kw = dict(alg=alg, temperature=temperature, top_p=top_p, alg_temp=alg_temp)
    set_seed(11)
    want = reference_dream(model, prompt, 10, 6, alg, temperature, top_p, alg_temp)
    for block in (None, 10):
        set_seed(11)
        out = generate(model, prompt, Dream(steps=6, block_length=block, **kw), gen_length=10)
        assert torch.equal(out.sequences, want)
        assert out.stats.nfe.tolist() == [6, 6]
    set_seed(11)
    want = reference_dream(model, prompt, 10, 6, alg, temperature, top_p, alg_temp, block_length=5)
    set_seed(11)
    out = generate(model, prompt, Dream(steps=6, block_length=5, **kw), gen_length=10)
    assert torch.equal(out.sequences, want)
    assert not (out.generated == 127).any()


def test_block_schedule_by_hand(fl):
    # gen 8 in 2 blocks of 4, steps 4 -> 2 steps per block on the restarted grid
    # t = linspace(1, 1e-3, 3) = [1, 0.5005, 0.001]: step 0 commits int(4 * 0.4995) = 1, the last
    # step the 3 left. Block 1 is more confident (0.9) than block 0 (0.3-0.6) but must wait.
    # Unrestarted (one grid of 5 points) the first step would commit int(4 * 0.24975) = 0.
    conf = [0.3, 0.6, 0.4, 0.5, 0.9, 0.95, 0.92, 0.91]
    spec = {j: (j % 6, p) for j, p in enumerate(conf)}  # output j scores offset j (prompt of 1)
    events = []
    out = generate(
        fl.model(fl.static(spec, 9), logit_shift=1),
        torch.tensor([[1]]),
        Dream(steps=4, alg="maskgit_plus", block_length=4),
        gen_length=8,
        callback=lambda e: events.append((e.step, (e.committed[0].nonzero() - 1).flatten())),
    )
    assert [(step, sorted(c.tolist())) for step, c in events] == [
        (1, [1]),  # block 0's most confident (0.6)
        (2, [0, 2, 3]),
        (3, [5]),  # block 1's most confident (0.95)
        (4, [4, 6, 7]),
    ]
    assert out.generated.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1]]
    assert out.stats.nfe.tolist() == [4]


def test_blocks_batched_left_padded_equal_per_row():
    model = tiny_shifted_bidirectional(seed=0, initializer_range=0.3)
    prompts = [torch.tensor([5, 9, 17, 3]), torch.tensor([44, 2])]
    batch = torch.tensor([[5, 9, 17, 3], [0, 0, 44, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    strategy = Dream(steps=6, alg="topk_margin", block_length=4)
    batched = generate(model, batch, strategy, gen_length=12, attention_mask=mask)
    for r, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], strategy, gen_length=12)
        assert torch.equal(alone.generated[0], batched.generated[r])
    assert batched.stats.nfe.tolist() == [6, 6]


def test_block_errors_name_the_fix():
    model = tiny_shifted_bidirectional()
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(model, torch.tensor([[1]]), Dream(steps=4, block_length=3), gen_length=8)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate(model, torch.tensor([[1]]), Dream(steps=3, block_length=4), gen_length=8)
    assert make_strategy("dream", block_length=4).block_length == 4
    with pytest.raises(ValueError, match="block_length"):
        Dream(block_length=0)
