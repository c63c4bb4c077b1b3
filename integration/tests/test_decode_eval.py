"""`layerwise eval decode`: the `decode:` switch on a model trained with `objective: mdm`."""

from __future__ import annotations

import json

import pytest
import torch

from dlm_decode import LLaDA, Prophet, StagedThresholds, generate
from layerwise.cli import main
from layerwise.eval.decode import DecodeConfig, evaluate_decoding
from layerwise.train import load_saved_model, pretrain

PROMPTS = ["Thou art", "What light through yonder window", "To be"]
ANSWERS = ["a", "b", "c"]


@pytest.fixture
def mdm_run(small_data, tmp_path, tiny_run):
    cfg = tiny_run(tmp_path / "mdm", "objective=mdm", "train.steps=5")
    pretrain(cfg, data=small_data)
    return tmp_path / "mdm" / "final", small_data.tokenizer


def _prompts_file(path, answers=ANSWERS):
    rows = [{"prompt": p, **({"answer": a} if answers else {})} for p, a in zip(PROMPTS, ANSWERS)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _direct(model, tokenizer, strategy, gen_length):
    """generate() on the prompts left-padded by hand: the outputs the command must print."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = generate(
        model,
        ids,
        strategy,
        gen_length=gen_length,
        attention_mask=mask,
        stop_at_eos=True,
        generator=torch.Generator().manual_seed(0),
    )
    return out.decode(tokenizer), out.stats.nfe.tolist()


def test_llada_and_prophet_equal_direct_generation(mdm_run, tmp_path, capsys):
    final, tokenizer = mdm_run
    model = load_saved_model(final)
    prompts = _prompts_file(tmp_path / "p.jsonl")
    out = tmp_path / "llada.json"
    args = ["eval", "decode", "--model", str(final), "--prompts", str(prompts), "--json", str(out)]
    assert main([*args, "decode.steps=16", "decode.block_length=8", "gen_length=16"]) == 0
    saved = json.loads(out.read_text())
    texts, nfe = _direct(model, tokenizer, LLaDA(steps=16, block_length=8), 16)
    assert saved["outputs"] == texts
    assert saved["nfe"] == nfe == [16, 16, 16]  # LLaDA's fixed schedule: one forward per step
    assert saved["correct"] == [t.strip() == a for t, a in zip(texts, ANSWERS)]
    assert "decode=llada: mean NFE 16.0" in capsys.readouterr().out

    # Prophet with every threshold at 0: the first forward's gap already clears it, so each row
    # commits everything after one model evaluation
    zero = ["decode.thresholds.early=0", "decode.thresholds.mid=0", "decode.thresholds.late=0"]
    prophet = ["decode=prophet", "decode.region=block", "decode.steps=16", "gen_length=16"]
    prophet += ["decode.block_length=16", *zero]
    assert main([*args, *prophet]) == 0
    saved = json.loads(out.read_text())
    strategy = Prophet(
        steps=16, block_length=16, region="block", thresholds=StagedThresholds(0, 0, 0)
    )
    texts, nfe = _direct(model, tokenizer, strategy, 16)
    assert saved["outputs"] == texts and saved["nfe"] == nfe == [1, 1, 1]
    assert saved["exit_step"] == [1, 1, 1]  # steps count from 1: the exit came at the first


def test_scorers_and_batches(mdm_run):
    final, tokenizer = mdm_run
    model = load_saved_model(final)
    one = evaluate_decoding(model, tokenizer, PROMPTS, ANSWERS, DecodeConfig(batch_size=1))
    three = evaluate_decoding(model, tokenizer, PROMPTS, ANSWERS, DecodeConfig(batch_size=3))
    assert one.outputs == three.outputs  # left padding does not change a row's decoding
    # per-row latency: within its batch's wall time (batches of 1: equal to it up to the stats call)
    assert len(one.row_wall_s) == len(three.row_wall_s) == 3
    assert 0 < max(three.row_wall_s) <= three.wall_s
    assert sum(one.row_wall_s) <= one.wall_s
    numbers = [f"{o} 12" for o in one.outputs]  # last-number scorer on texts we control
    from layerwise.eval.decode import _score

    assert [_score(t, "12", "last_number") for t in numbers] == [True] * 3
    assert not _score("12 apples", "13", "last_number")
    assert _score("  the  ", "the", "exact") and not _score("then", "the", "exact")


def test_bad_input_is_named(mdm_run, tmp_path, capsys, small_data, tiny_run):
    final, _ = mdm_run
    prompts = _prompts_file(tmp_path / "p.jsonl")
    base = ["eval", "decode", "--model", str(final), "--prompts", str(prompts)]
    assert main([*base, "decode=beam"]) == 2
    assert (
        "field 'decode': unknown name 'beam' (did you mean 'dream'?): choose one of llada, "
        "prophet, fast_dllm, dream, soar"
    ) in capsys.readouterr().err
    assert main([*base, "decode.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'decode.stepz' (did you mean 'decode.steps'?)" in err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    assert main([*base[:-1], str(mixed)]) == 2
    assert "on every line or on none" in capsys.readouterr().err

    causal = tmp_path / "causal"
    pretrain(tiny_run(causal, "train.steps=2"), data=small_data)
    assert (
        main(["eval", "decode", "--model", str(causal / "final"), "--prompts", str(prompts)]) == 2
    )
    assert "not a masked-diffusion LM" in capsys.readouterr().err


def test_new_strategies_by_name_equal_their_exact_special_cases(mdm_run):
    # Reached by name through the `decode:` switch, the new samplers reduce to older ones where
    # they are exact: Elastic-Cache refreshing every step with a window over the whole generation
    # is Fast-dLLM uncached with one block; NAP's parallel-forced with one token per step is
    # LLaDA with one block and a step per token.
    final, tokenizer = mdm_run
    model = load_saved_model(final)

    def run(**decode):
        cfg = DecodeConfig.from_dict({"decode": decode, "gen_length": 8, "batch_size": 3})
        return evaluate_decoding(model, tokenizer, PROMPTS, None, cfg)

    elastic = run(name="elastic_cache", gamma=1.0, window=8, threshold=0.2)
    fast = run(name="fast_dllm", block_length=8, threshold=0.2)
    assert elastic.outputs == fast.outputs and elastic.nfe == fast.nfe
    forced = run(name="parallel_forced", tokens_per_step=1)
    llada = run(name="llada", steps=8, block_length=8)
    assert forced.outputs == llada.outputs and forced.nfe == llada.nfe == [8, 8, 8]
    two = run(name="parallel_forced", tokens_per_step=2)
    assert two.nfe == [4, 4, 4]  # exactly two commits per step (no EOS stop on this model)
    beam = run(name="soar_beam", beam_width=1, confidence_threshold=None)
    assert beam.outputs == llada.outputs  # one beam, no parallel branch: greedy, one per step
