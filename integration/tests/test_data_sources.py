"""Local Parquet and Arrow sources (a file, a folder, a glob), the text field option, their errors.

The reference for every format is the same rows written as JSON lines: each source must give the
same documents, keys and split.
"""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layerwise.data import load_corpus, parse_source
from layerwise_core import MissingPathError, UsageError


@pytest.fixture(scope="module")
def rows(shakespeare):
    """60 rows of Shakespeare: paragraphs of one play, with an id column, two blank texts."""
    play = next(iter(shakespeare.texts("train")))
    texts = [p for p in play.split("\n\n") if p.strip()][:60]
    texts[5] = ""  # blank rows are no documents
    texts[9] = None
    return [{"id": i, "body": t} for i, t in enumerate(texts)]


def _documents(corpus):
    return {s: corpus.splits[s].to_dict() for s in ("train", "validation")}


def _jsonl_reference(rows, tmp_path):
    path = tmp_path / "ref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _documents(load_corpus(f"jsonl:{path}:body", 0.1, cache=tmp_path / "c"))


def test_parquet_file_folder_and_glob_equal_the_jsonl_corpus(rows, tmp_path):
    reference = _jsonl_reference(rows, tmp_path)
    assert len(reference["train"]["text"]) + len(reference["validation"]["text"]) == 58
    (tmp_path / "one").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "one" / "all.parquet", row_group_size=7)
    shards = tmp_path / "shards" / "nested"
    shards.mkdir(parents=True)
    for i in range(3):  # shards in name order are the rows in order
        pq.write_table(pa.Table.from_pylist(rows[20 * i : 20 * i + 20]), shards / f"p{i}.parquet")
    (shards / "notes.txt").write_text("not a shard")  # a folder is searched for *.parquet only
    cache = tmp_path / "c"
    for spec in (
        f"parquet:{tmp_path / 'one' / 'all.parquet'}:body",
        f"parquet:{tmp_path / 'shards'}:body",
        f"parquet:{shards}/p*.parquet:body",
    ):
        assert _documents(load_corpus(spec, 0.1, cache=cache)) == reference, spec


def test_arrow_files_from_save_to_disk_and_ipc_streams(rows, tmp_path):
    reference = _jsonl_reference(rows, tmp_path)
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")  # data-*.arrow + json
    assert _documents(load_corpus(f"arrow:{tmp_path / 'saved'}:body", 0.1)) == reference
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_file(tmp_path / "rows.arrow", table.schema) as writer:  # IPC file format
        writer.write_table(table, max_chunksize=11)
    corpus = load_corpus(f"arrow:{tmp_path / 'rows.arrow'}", 0.1, text_field="body")
    assert _documents(corpus) == reference


def test_text_field_option_and_its_errors(rows, tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    by_option = load_corpus(f"parquet:{path}", 0.1, text_field="body")
    assert by_option.source == parse_source(f"parquet:{path}:body")
    assert _documents(by_option) == _documents(load_corpus(f"parquet:{path}:body", 0.1))
    with pytest.raises(UsageError, match=r"no field 'text' \(they have \['id', 'body'\]\)"):
        load_corpus(f"parquet:{path}", 0.1)
    with pytest.raises(UsageError, match="field 'id' holds Value\\('int64'\\), not text"):
        load_corpus(f"parquet:{path}:id", 0.1)
    with pytest.raises(UsageError, match="contradicts the field 'body'"):
        load_corpus(f"parquet:{path}:body", 0.1, text_field="id")
    with pytest.raises(UsageError, match="applies to jsonl / parquet / arrow / hf sources"):
        load_corpus("shakespeare", text_field="body")


def test_missing_empty_and_blank_sources(tmp_path):
    with pytest.raises(MissingPathError, match=r"holds no \*.parquet file"):
        load_corpus(f"parquet:{tmp_path}")
    with pytest.raises(MissingPathError, match="no file matches"):
        load_corpus(f"arrow:{tmp_path}/nothing-*.arrow")
    path = tmp_path / "blank.parquet"
    pq.write_table(pa.table({"text": ["", "  \n", None]}), path)
    with pytest.raises(UsageError, match=r"is empty \(1 file, no non-blank document\)"):
        load_corpus(f"parquet:{path}")
    with pytest.raises(UsageError, match="unknown corpus source 'csv:x'.*parquet:PATH"):
        parse_source("csv:x")
