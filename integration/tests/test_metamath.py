"""MetaMathQA-style jsonl loading: the exact text format, padding, labels and truncation."""

import json

import pytest
import torch

from layerwise.data.metamath import (
    MetaMathDataset,
    format_example,
    load_metamath_jsonl,
    tokenize_examples,
)
from layerwise.data.tokenizer import PAD_TOKEN, train_bpe_tokenizer

RECORDS = [
    {"query": "What is 2+3?", "response": "2+3=5. The answer is: 5", "type": "GSM_AnsAug"},
    {
        "query": "Tom has 4 apples and eats 1. How many are left?",
        "response": "4-1=3. The answer is: 3",
    },
    {"query": ["Double 7."], "response": ["7*2=14. The answer is: 14"]},
]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "metamath.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    texts = [format_example(r) for r in RECORDS] * 20
    return train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)


def test_format_is_key_colon_value_space_joined():
    assert format_example(RECORDS[0]) == "query : What is 2+3? response : 2+3=5. The answer is: 5"
    assert format_example(RECORDS[2]) == "query : Double 7. response : 7*2=14. The answer is: 14"
    assert format_example(RECORDS[0], fields=("response",)) == "response : 2+3=5. The answer is: 5"


def test_missing_field_names_the_fix(jsonl, tmp_path):
    with pytest.raises(KeyError, match="pass fields="):
        format_example({"question": "x", "answer": "y"})
    with pytest.raises(KeyError, match=r"metamath.jsonl:1: record has no field 'solution'"):
        load_metamath_jsonl(jsonl, fields=("query", "solution"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        load_metamath_jsonl(bad)


def test_load_skips_blank_lines_and_limits(jsonl):
    assert load_metamath_jsonl(jsonl) == [format_example(r) for r in RECORDS]
    assert load_metamath_jsonl(jsonl, limit=2) == [format_example(r) for r in RECORDS[:2]]


def test_padding_labels_and_round_trip(tokenizer):
    texts = [format_example(r) for r in RECORDS]
    batch = tokenize_examples(texts, tokenizer, max_length=64)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    for row, text in enumerate(texts):
        mask = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row]
        want = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[mask].tolist() == want  # no BOS/EOS added, nothing dropped
        assert tokenizer.decode(ids[mask]) == text  # byte-level BPE: exact round trip
        assert (ids[~mask] == pad).all() and mask[: len(want)].all() and not mask[len(want) :].any()
        assert (batch["labels"][row][~mask] == -100).all()
        assert torch.equal(batch["labels"][row][mask], ids[mask])


def test_truncation(tokenizer):
    text = format_example(RECORDS[1])
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    right = tokenize_examples([text], tokenizer, max_length=5)["input_ids"][0].tolist()
    left = tokenize_examples([text], tokenizer, max_length=5, truncation="left")["input_ids"][0]
    assert right == full[:5] and left.tolist() == full[-5:]
    with pytest.raises(ValueError, match="raise max_length or pass truncation='right'"):
        tokenize_examples([text], tokenizer, max_length=5, truncation="error")


def test_needs_a_pad_token(tokenizer):
    from transformers import PreTrainedTokenizerFast

    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="set tokenizer.pad_token"):
        tokenize_examples(["query : a response : b"], no_pad, max_length=8)


def test_dataset_items(jsonl, tokenizer):
    data = MetaMathDataset(jsonl, tokenizer, max_length=48)
    assert len(data) == 3
    item = data[1]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (48,) for t in item.values())
    assert tokenizer.decode(item["input_ids"][item["attention_mask"].bool()]) == data.texts[1]
