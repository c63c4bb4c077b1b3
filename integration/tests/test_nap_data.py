"""NAP's SFT data layout: every trajectory once and in its numbered block, trajectories that stand
alone, the answer last, and a round trip through the fine-tuning reader and tokenizer."""

from __future__ import annotations

import re

import pytest

from layerwise.eval.math_generation import last_number
from layerwise.finetune import encode_examples, format_prompt, read_jsonl, write_jsonl
from layerwise.finetune.nap_data import (
    arithmetic_nap_records,
    arithmetic_trajectories,
    long_cot_target,
    nap_record,
    nap_target,
    parse_nap_target,
    structure_tokens,
)

PAIRS = [(47, 85), (33, 33), (5, 40), (0, 0), (99, 99), (10, 7)]


def test_structure_tokens_are_naps():
    # fsdp_sft_trainer.build_structure_special_tokens with max_think_blocks = 6
    numbered = [f"<{c}think {i}>" for i in range(1, 7) for c in ("", "/")]
    assert structure_tokens() == [*numbered, "<think>", "</think>", "<summary>", "</summary>"]


def test_layout_by_hand():
    target = nap_target(["a=1", "b=2"], "S 3")
    assert target == "<think 1>a=1</think 1>\n<think 2>b=2</think 2>\n<summary>S 3</summary>"
    assert nap_target(["x"], "y", separator="") == "<think 1>x</think 1><summary>y</summary>"


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_every_trajectory_appears_once_in_its_numbered_block(k):
    for record in arithmetic_nap_records(PAIRS, trajectories=k, seed=k):
        a, b = map(int, re.findall(r"\d+", record["instruction"]))
        target = record["answer"]
        found, summary = parse_nap_target(target)
        available = arithmetic_trajectories(a, b)
        assert len(found) == min(k, len(available)) and len(set(found)) == len(found)
        assert set(found) <= set(available)
        numbers = [int(n) for n in re.findall(r"<think (\d+)>", target)]
        assert numbers == list(range(1, len(found) + 1))
        for i, text in enumerate(found, start=1):
            assert target.count(f"<think {i}>{text}</think {i}>") == 1
        assert summary is not None


def _self_contained(trajectory: str, a: int, b: int) -> bool:
    """Each step x+y=z is right, its operands are a, b, their tens / ones or a result of an
    earlier step of the same trajectory, and the last result is a + b."""
    known = {a, b, a - a % 10, a % 10, b - b % 10, b % 10}
    result = None
    for step in trajectory.split(", "):
        x, y, z = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", step).groups())
        if x + y != z or x not in known or y not in known:
            return False
        known.add(z)
        result = z
    return result == a + b


def test_trajectories_are_independent_complete_solutions():
    for a, b in PAIRS:
        for trajectory in arithmetic_trajectories(a, b):
            assert _self_contained(trajectory, a, b), (a, b, trajectory)
    # the property can fail: a step that uses another trajectory's result is caught
    assert not _self_contained("40+80=120, 127+5=132", 47, 85)
    assert len(arithmetic_trajectories(47, 85)) == 4
    assert len(arithmetic_trajectories(33, 33)) == 3  # a == b: the last two coincide


def test_independent_segments_reorder_freely():
    # the canvas of a permutation holds the same segments, renumbered in order of appearance
    trajectories = arithmetic_trajectories(47, 85)
    forward = parse_nap_target(nap_target(trajectories, "x"))[0]
    backward = parse_nap_target(nap_target(trajectories[::-1], "x"))[0]
    assert forward == trajectories and backward == trajectories[::-1]


def test_the_answer_is_last_in_the_summary():
    for record in arithmetic_nap_records(PAIRS, trajectories=3):
        a, b = map(int, re.findall(r"\d+", record["instruction"]))
        target = record["answer"]
        assert target.endswith(f"<summary>{a:02d}+{b:02d}={a + b:03d}</summary>")
        assert last_number(target) == a + b
    record = nap_record("q", ["1+1=2"], 2)
    assert record["answer"].endswith("<summary>The answer is 2.</summary>")
    with pytest.raises(ValueError, match="must end with the answer"):
        nap_record("q", ["1+1=2"], 2, summary="The answer is 3.")


def test_fixed_width_blocks_line_up_and_parse_back():
    records = arithmetic_nap_records(PAIRS, trajectories=3, width=40, filler="_")
    spans = set()
    for record in records:
        target = record["answer"]
        starts = [m.start(2) for m in re.finditer(r"<think (\d)>([^<]*)</think", target)]
        spans.add(tuple(starts))
        assert all(len(t) == 40 for t in re.findall(r"<think \d>([^<]*)</think", target))
        found, _ = parse_nap_target(target, filler="_")
        a, b = map(int, re.findall(r"\d+", record["instruction"]))
        assert all(_self_contained(t, a, b) for t in found)
    # trajectory j starts at the same character in every target ((0, 0) has only 2 distinct)
    longest = max(spans, key=len)
    assert len(longest) == 3 and all(s == longest[: len(s)] for s in spans)
    with pytest.raises(ValueError, match="more than width=5"):
        nap_target(["123456"], "s", width=5)


def test_long_cot_control_has_the_same_content_without_structure():
    nap = arithmetic_nap_records(PAIRS, trajectories=3, seed=4)
    chain = arithmetic_nap_records(PAIRS, trajectories=3, seed=4, layout="long_cot")
    for n, c in zip(nap, chain):
        found, summary = parse_nap_target(n["answer"])
        assert c["answer"] == long_cot_target(found, summary)
        assert "<think" not in c["answer"] and "<summary>" not in c["answer"]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at most 6"):
        nap_target(["x"] * 7, "s")
    with pytest.raises(ValueError, match="at least one trajectory"):
        nap_target([], "s")
    with pytest.raises(ValueError, match="structure text '<summary>'"):
        nap_target(["a <summary> b"], "s")
    with pytest.raises(ValueError, match="layout must be"):
        arithmetic_nap_records(PAIRS, layout="tree")


def test_round_trip_through_the_finetune_reader(tmp_path):
    from layerwise.data import train_bpe_tokenizer

    records = arithmetic_nap_records(PAIRS, trajectories=3, instruction_field="q", answer_field="t")
    path = write_jsonl(records, tmp_path / "nap.jsonl")
    assert read_jsonl(path) == records
    texts = [format_prompt(r["q"]) + r["t"] for r in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1, quiet=True)
    tokenizer.add_special_tokens({"additional_special_tokens": structure_tokens()})
    encoded = encode_examples(read_jsonl(path), tokenizer, "q", "t", max_length=512)
    tag_ids = set(tokenizer.convert_tokens_to_ids(structure_tokens()))
    for record, (ids, labels) in zip(records, encoded):
        prompt = len(tokenizer(format_prompt(record["q"]), add_special_tokens=False)["input_ids"])
        assert labels[:prompt] == [-100] * prompt and labels[prompt:] == ids[prompt:]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[prompt:-1]) == record["t"]
        # each tag is one token: 3 blocks x 2 tags + the summary's 2
        assert sum(i in tag_ids for i in ids) == 2 * len(parse_nap_target(record["t"])[0]) + 2
