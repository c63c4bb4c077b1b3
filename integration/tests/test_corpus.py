"""Local corpus sources (text, jsonl), spec parsing and the document split."""

from __future__ import annotations

import json

import pytest

from layerwise.data import load_corpus, parse_source, validation_keys
from layerwise_core import UsageError


def test_missing_local_file_gives_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "book.txt"
    with pytest.raises(FileNotFoundError) as err:
        load_corpus(f"text:{missing}", cache=tmp_path)
    assert str(missing) in str(err.value)
    assert "data.source=shakespeare" in str(err.value)


def test_unknown_spec_and_missing_jsonl_field(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus source 'wiki'.*text:PATH"):
        parse_source("wiki")
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(5)))
    with pytest.raises(UsageError, match=r"no field 'text' \(they have \['body'\]\)"):
        load_corpus(f"jsonl:{path}", cache=tmp_path)


def test_parse_source():
    assert parse_source("jsonl:data/a.jsonl:body").field == "body"
    assert parse_source("jsonl:data/a.jsonl").field == "text"
    assert parse_source("hf:HuggingFaceFW/fineweb-edu:sample-10BT").config == "sample-10BT"
    assert parse_source("text:/x/y.txt").location == "/x/y.txt"


def test_text_paragraphs_and_jsonl_rows_become_split_documents(tmp_path):
    paragraphs = [f"paragraph {i}\nsecond line {i}" for i in range(30)]
    (tmp_path / "book.txt").write_text("\n\n".join(paragraphs) + "\n")
    corpus = load_corpus(f"text:{tmp_path / 'book.txt'}", val_fraction=0.1, cache=tmp_path / "c")
    train, val = (corpus.splits[s].to_dict() for s in ("train", "validation"))
    assert len(val["key"]) == 3 and len(train["key"]) == 27
    assert sorted(t.strip() for t in train["text"] + val["text"]) == sorted(paragraphs)

    rows = [{"body": f"row {i}", "id": i} for i in range(40)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = load_corpus(f"jsonl:{path}:body", val_fraction=0.1, cache=tmp_path / "c")
    train, val = (corpus.splits[s].to_dict() for s in ("train", "validation"))
    assert sorted(train["text"] + val["text"]) == sorted(r["body"] for r in rows)
    assert set(val["key"]) == validation_keys([f"{i:02d}" for i in range(40)], 0.1)
    assert train["text"] == [f"row {int(k)}" for k in train["key"]]  # corpus order kept


def test_validation_keys_rank_by_hash_and_need_two_documents():
    keys = [f"k{i}" for i in range(100)]
    chosen = validation_keys(keys, 0.05)
    assert len(chosen) == 5
    assert validation_keys(list(reversed(keys)), 0.05) == chosen  # order-free
    assert validation_keys(keys, 0.05, salt="other") != chosen
    with pytest.raises(ValueError, match="cannot split 1 document"):
        validation_keys(["only"], 0.1)
