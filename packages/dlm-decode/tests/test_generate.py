"""generate(): counters, the end-of-text stop, streaming, and the output helpers."""

import pytest
import torch

from dlm_decode import LLaDA, Prophet, StagedThresholds, generate


def test_stop_at_eos_saves_steps_and_pads_with_eos(fl):
    # one block of 6, one token per step; offset 1 predicts EOS with the highest confidence, then
    # offset 0. After step 2 everything before the first EOS is decoded: the row stops there.
    spec = {1: (3, 0.6), 2: (fl.EOS, 0.9), 3: (4, 0.5), 4: (5, 0.4), 5: (2, 0.3), 6: (1, 0.2)}
    steps = []
    out = generate(fl.model(fl.static(spec, 7)), torch.tensor([[0]]),
                   LLaDA(steps=6, block_length=6), gen_length=6, stop_at_eos=True,
                   callback=lambda e: steps.append(e.step))  # fmt: skip
    assert out.generated.tolist() == [[3, fl.EOS] + [fl.EOS] * 4]
    assert out.stats.nfe.tolist() == [2] and steps == [1, 2]
    assert out.stats.generated_tokens.tolist() == [1]  # tokens before the first EOS
    full = generate(fl.model(fl.static(spec, 7)), torch.tensor([[0]]),
                    LLaDA(steps=6, block_length=6), gen_length=6)  # fmt: skip
    assert full.generated.tolist() == [[3, fl.EOS, 4, 5, 2, 1]]
    assert full.stats.nfe.tolist() == [6]


def test_counters(fl):
    spec = {1: (3, 0.6), 2: (4, 0.9)}
    out = generate(fl.model(fl.static(spec, 3)), torch.tensor([[0], [1]]),
                   LLaDA(steps=2, block_length=2, cfg_scale=0.5), gen_length=2)  # fmt: skip
    stats = out.stats
    assert stats.nfe.tolist() == [4, 4]  # guidance: 2 evaluations per step
    assert stats.steps.tolist() == [2, 2] and stats.forward_calls == 2
    assert stats.sequence_evals.tolist() == [4, 4]
    assert stats.generated_tokens.tolist() == [2, 2]
    assert stats.tokens_per_second == 4 / stats.wall_s
    summary = stats.summary()
    assert summary["nfe"] == 4.0 and summary["speedup"] == 1.0
    # Prophet exits at step 1 (the threshold is tiny): 1 of 4 steps used, speedup 4
    prophet = Prophet(
        steps=4, block_length=2, region="masked", thresholds=StagedThresholds(0, 0, 0)
    )
    out = generate(fl.model(fl.static(spec, 5)), torch.tensor([[0]]), prophet, gen_length=4)
    assert out.stats.steps_saved.tolist() == [3] and out.stats.speedup.tolist() == [4.0]


def test_streaming_events_cover_every_position(fl):
    spec = {i: (i % 5, 0.1 + i / 20) for i in range(1, 9)}
    seen = torch.zeros(9, dtype=torch.long)
    snapshots = []

    def callback(event):
        seen[event.committed[0]] += 1
        snapshots.append(event.x[0].clone())

    generate(fl.model(fl.static(spec, 9)), torch.tensor([[0]]), LLaDA(steps=4, block_length=4),
             gen_length=8, callback=callback)  # fmt: skip
    assert seen[1:].tolist() == [1] * 8 and len(snapshots) == 4
    assert [int((s == fl.MASK).sum()) for s in snapshots] == [6, 4, 2, 0]


class _Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_decode_cuts_at_eos(fl):
    spec = {1: (3, 0.6), 2: (fl.EOS, 0.9), 3: (4, 0.5)}
    out = generate(fl.model(fl.static(spec, 4)), torch.tensor([[0]]),
                   LLaDA(steps=3, block_length=3), gen_length=3)  # fmt: skip
    assert out.decode(_Tokenizer()) == ["3"]


def test_make_strategy_by_config_name():
    from dlm_decode import FastDLLM, make_strategy

    assert make_strategy("fast_dllm", threshold=0.8) == FastDLLM(threshold=0.8)
    with pytest.raises(ValueError, match="choose one of"):
        make_strategy("greedy")


def test_row_wall_time_is_when_each_row_completed(fl):
    # Row 0's prompt token 1 makes offset 1 predict EOS first: with the end-of-text stop it is
    # done after 2 of 6 steps; row 1 decodes all 6. Each forward sleeps 20 ms, so row 0's
    # latency is about 2 forwards and row 1's about 6 (the batch's wall time).
    import time

    spec = {1: (3, 0.6), 2: (4, 0.9), 3: (4, 0.5), 4: (5, 0.4), 5: (2, 0.3), 6: (1, 0.2)}
    table = fl.static(spec, 7)
    eos = fl.prob_logits(fl.EOS, 0.9)

    def fn(x, call):
        time.sleep(0.02)
        logits = table(x, call)
        logits[x[:, 0] == 1, 2] = eos
        return logits

    out = generate(fl.model(fn), torch.tensor([[1], [0]]), LLaDA(steps=6, block_length=6),
                   gen_length=6, stop_at_eos=True)  # fmt: skip
    stats = out.stats
    assert stats.nfe.tolist() == [2, 6]
    early, late = stats.row_wall_s.tolist()
    assert 0.04 <= early < late <= stats.wall_s
    assert late >= 0.12 and early < 0.5 * late
