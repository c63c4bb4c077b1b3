"""Streamed corpora: packing on the fly equals packing in memory; a resume mid-document continues
with the same blocks as an uninterrupted read; a pretrain on a stream resumes bitwise and runs
the same on 2 processes as on 1.

The stream is a local Parquet / JSON-lines file opened with `datasets` streaming (the code path
`hf:` sources take after opening the hub dataset); the text is Shakespeare's, the tokenizer the
project's BPE trained on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from layerwise.data import (
    PackedBlocks,
    StreamedBlocks,
    hash_fraction,
    load_corpus,
    load_tokenizer,
    pack_documents,
    prepare_data,
)
from layerwise.train.checkpoint import read_model_state
from layerwise_core import UsageError

T = 32  # block size: documents below span several blocks, so most cuts fall inside one


@pytest.fixture(scope="module")
def documents(shakespeare):
    """~240 documents of Shakespeare (5 paragraphs each, 40 to 4,000 characters), a few blank."""
    paragraphs = [p for t in list(shakespeare.texts("train"))[:3] for p in t.split("\n\n")]
    docs = ["\n\n".join(paragraphs[i : i + 5]) for i in range(0, 1200, 5)]
    docs[7] = docs[50] = "   "  # blank rows are no documents
    return docs


@pytest.fixture(scope="module")
def tokenizer(shakespeare):
    return load_tokenizer("bpe", load_corpus("shakespeare", max_documents=4), 512)


def _write_parquet(path, docs, row_group_size=16):
    table = pa.table({"id": list(range(len(docs))), "body": docs})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _stream_corpus(path, **kwargs):
    return load_corpus(f"parquet:{path}:body", 0.1, streaming=True, **kwargs)


def _reference_blocks(docs, tokenizer, epochs=1, held_out=True):
    """What `PackedBlocks` cuts from the train documents packed in memory (epochs back to back)."""
    train = [
        d
        for row, d in enumerate(docs)
        if d.strip() and not (held_out and hash_fraction(str(row)) < 0.1)
    ]
    ids = tokenizer(train * epochs, add_special_tokens=False)["input_ids"]
    return PackedBlocks(pack_documents(ids, tokenizer.eos_token_id), T)


def test_stream_packs_the_same_blocks_as_memory_across_epochs(documents, tokenizer, tmp_path):
    corpus = _stream_corpus(_write_parquet(tmp_path / "docs.parquet", documents))
    assert corpus.splits is None and corpus.stream is not None
    reference = _reference_blocks(documents, tokenizer, epochs=2)
    per_epoch = len(_reference_blocks(documents, tokenizer))
    reader = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=8)
    # odd batch sizes; the second epoch begins (and packing continues across the seam) inside
    got = torch.cat([reader.next_global_batch(n) for n in (5, 1, 37, per_epoch)])
    assert got.dtype == torch.int64
    assert torch.equal(got, reference.gather(range(len(got))))
    assert reader.epoch == 1


def test_hash_split_holds_out_the_validation_documents(documents, tokenizer, tmp_path):
    corpus = _stream_corpus(_write_parquet(tmp_path / "docs.parquet", documents))
    held = [d for row, d in enumerate(documents) if hash_fraction(str(row)) < 0.1 and d.strip()]
    assert 10 < len(held) < 40  # about 10% of 240
    assert list(corpus.texts("validation")) == held  # fewer than the 800 it may take: all of them
    train = [d for row, d in enumerate(documents) if hash_fraction(str(row)) >= 0.1 and d.strip()]
    assert list(corpus.texts("train")) == train  # the BPE sample (10,000) covers all of them
    limited = _stream_corpus(tmp_path / "docs.parquet", max_documents=100)
    assert list(limited.texts("train")) == [
        d for row, d in enumerate(documents[:100]) if hash_fraction(str(row)) >= 0.1 and d.strip()
    ]
    # round(100 * 0.1) = 10 documents, the first held out among the first 100 rows
    held_100 = [d for d in held if documents.index(d) < 100]
    assert len(held_100) > 10 and list(limited.texts("validation")) == held_100[:10]


def _counting(stream):
    """`stream` whose opened datasets count the rows they yield, in `counter['rows']`."""
    counter = {"rows": 0}
    opener = stream.open_split

    class Counted:
        def __init__(self, ds):
            self.ds = ds

        def load_state_dict(self, state):
            self.ds.load_state_dict(state)

        def state_dict(self):
            return self.ds.state_dict()

        def __iter__(self):
            for row in self.ds:
                counter["rows"] += 1
                yield row

    return dataclasses.replace(stream, open_split=lambda split: Counted(opener(split))), counter


@pytest.mark.parametrize("source", ["parquet", "jsonl"])
def test_resume_mid_document_equals_an_uninterrupted_read(documents, tokenizer, tmp_path, source):
    if source == "parquet":
        corpus = _stream_corpus(_write_parquet(tmp_path / "docs.parquet", documents))
    else:
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents))
        corpus = load_corpus(f"jsonl:{path}:body", 0.1, streaming=True)
    straight = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=8)
    expected = straight.next_global_batch(300)

    first = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=8)
    head = torch.cat([first.next_global_batch(4), first.next_global_batch(150)])
    state = json.loads(json.dumps(first.state_dict()))  # what trainer_state.json holds
    # the cut falls inside a document: the carried tokens continue it (no EOS at the boundary)
    eos = tokenizer.eos_token_id
    assert state["carry"][0] == head[-1, -1] != eos and head[-1, -2] != eos
    assert state["blocks"] == 154 and state["rows"] > 8
    # the datasets iterator state of the batch being packed is saved, not just a row count
    assert state["iterator"] is not None and 0 < state["iterator_row"] <= state["rows"]

    stream, counter = _counting(corpus.stream)
    resumed = StreamedBlocks(stream, tokenizer, T, read_rows=8)
    resumed.load_state_dict(state)
    tail = resumed.next_global_batch(146)
    assert torch.equal(torch.cat([head, tail]), expected)
    # it reopened the stream where it was: it read the rows after the saved iterator state only
    assert counter["rows"] < len(documents) - state["iterator_row"] + 8


def test_resume_at_every_cut_of_a_short_read(documents, tokenizer, tmp_path):
    """Saved after every step of 3 blocks and resumed, over 1.5 epochs: the same next step."""
    docs = documents[:16]
    per_epoch = len(_reference_blocks(docs, tokenizer))
    assert 20 < per_epoch < 200
    corpus = _stream_corpus(_write_parquet(tmp_path / "docs.parquet", docs))
    straight = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=3)
    reader = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=3)
    for _ in range(per_epoch // 2):
        state = json.loads(json.dumps(reader.state_dict()))
        reader = StreamedBlocks(corpus.stream, tokenizer, T, read_rows=3)
        reader.load_state_dict(state)
        assert torch.equal(reader.next_global_batch(3), straight.next_global_batch(3))
    assert reader.epoch == 1  # the cuts crossed the epoch boundary


def test_state_mismatches_are_refused(documents, tokenizer, tmp_path, small_data):
    corpus = _stream_corpus(_write_parquet(tmp_path / "docs.parquet", documents))
    reader = StreamedBlocks(corpus.stream, tokenizer, T)
    reader.next_global_batch(2)
    with pytest.raises(UsageError, match="same train.block_size"):
        StreamedBlocks(corpus.stream, tokenizer, T + 1).load_state_dict(reader.state_dict())
    shuffled = small_data.training_batches(seed=0, global_batch=4)
    with pytest.raises(UsageError, match="streamed corpus, this run reads blocks held in memory"):
        shuffled.load_state_dict(reader.state_dict())
    with pytest.raises(UsageError, match="not that of a streamed corpus"):
        reader.load_state_dict(shuffled.state_dict())


def test_missing_text_column_and_stream_without_documents(documents, tokenizer, tmp_path):
    path = _write_parquet(tmp_path / "docs.parquet", documents)
    corpus = load_corpus(f"parquet:{path}:text", streaming=True)  # the column is 'body'
    with pytest.raises(UsageError, match=r"no field 'text' \(they have \['body', 'id'\]\)"):
        StreamedBlocks(corpus.stream, tokenizer, T).next_global_batch(1)
    blank = _write_parquet(tmp_path / "blank.parquet", ["", "  ", "\n"] * 4)
    corpus = load_corpus(f"parquet:{blank}:body", streaming=True)
    with pytest.raises(UsageError, match="has no training document"):
        StreamedBlocks(corpus.stream, tokenizer, T).next_global_batch(1)


def _tiny_stream_run(tiny_run, out_dir, data_dir, *overrides):
    return tiny_run(
        out_dir,
        f"data.source=parquet:{data_dir}",
        "data.text_field=body",
        "data.streaming=true",
        f"data.tokenizer={data_dir / 'tokenizer'}",
        "data.max_documents=null",
        "train.block_size=32",
        *overrides,
    )


@pytest.fixture(scope="module")
def stream_folder(documents, tokenizer, tmp_path_factory):
    """A folder with two Parquet files (a glob of shards) and the tokenizer saved beside them."""
    folder = tmp_path_factory.mktemp("stream")
    _write_parquet(folder / "part-0.parquet", documents[:120])
    _write_parquet(folder / "part-1.parquet", documents[120:])
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def _params(run_dir, step):
    return read_model_state(run_dir / "checkpoints" / f"step_{step}")


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_pretrain_on_a_stream_resumes_bitwise(stream_folder, tmp_path, tiny_run):
    from layerwise.train import latest_checkpoint, pretrain

    common = ("train.steps=8", "train.save_every=3", "train.grad_accum=2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    data = prepare_data(_tiny_stream_run(tiny_run, straight, stream_folder).data, 32)
    pretrain(_tiny_stream_run(tiny_run, straight, stream_folder, *common), data=data)
    pretrain(_tiny_stream_run(tiny_run, resumed, stream_folder, *common), stop_at=3, data=data)
    state = json.loads(
        (latest_checkpoint(resumed / "checkpoints") / "trainer_state.json").read_text()
    )
    assert state["data"]["blocks"] == 3 * 8  # 3 steps of 4 blocks x 2 micro-batches
    resumed_cfg = _tiny_stream_run(tiny_run, resumed, stream_folder, *common, "train.resume=true")
    pretrain(resumed_cfg)  # data prepared afresh, as a restarted job would
    expected, got = _params(straight, 8), _params(resumed, 8)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    assert not torch.equal(_params(resumed, 3)["lm_head.weight"], expected["lm_head.weight"])


@pytest.mark.distributed
def test_two_processes_on_a_stream_match_one(stream_folder, tmp_path, tiny_run):
    from layerwise.train import pretrain, read_metrics

    common = (
        "train.steps=4",
        "train.grad_accum=2",
        "schedule.warmup_steps=1",
        "train.save_every=4",
    )
    config = tmp_path / "ddp.yaml"
    ddp = _tiny_stream_run(tiny_run, tmp_path / "ddp", stream_folder, *common, "train.batch_size=2")
    config.write_text(yaml.safe_dump(ddp.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "layerwise.cli", "pretrain", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, half = tmp_path / "single", tmp_path / "half"
    pretrain(_tiny_stream_run(tiny_run, single, stream_folder, *common, "train.batch_size=4"))
    # one process, half the global batch: other blocks (what a per-process stream would read)
    pretrain(_tiny_stream_run(tiny_run, half, stream_folder, *common, "train.batch_size=2"))
    two, one, other = (_params(tmp_path / d, 4) for d in ("ddp", "single", "half"))
    # fp32 summation order: Adam's normalised step turns a 1e-9 gradient difference of an element
    # with a tiny gradient into up to ~1.5e-5 (measured); other data moves parameters 100x more
    assert _max_diff(two, one) < 1e-4
    assert _max_diff(other, one) > 100 * 1e-4
    ddp_log, one_log = read_metrics(tmp_path / "ddp"), read_metrics(single)
    for a, b in zip(ddp_log, one_log, strict=True):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_hf_sources_take_the_same_path(documents, tokenizer, tmp_path, monkeypatch):
    """`hf:ORG/NAME:CONFIG` through the real hub code, `datasets.load_dataset` answering from
    local Parquet files (the hub is unreachable): a validation split is used as it is."""
    import datasets

    _write_parquet(tmp_path / "train.parquet", documents[:200])
    _write_parquet(tmp_path / "validation.parquet", documents[200:])
    local = datasets.load_dataset
    opened = []

    def hub(path, name=None, split=None, streaming=False, **kwargs):
        assert (path, name, streaming, kwargs) == ("layerwise/shakespeare", "plays", True, {})
        opened.append(split)
        files = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "validation")}
        return local("parquet", data_files=files, split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    corpus = load_corpus("hf:layerwise/shakespeare:plays", 0.1, text_field="body")
    assert corpus.stream.has_validation_split and corpus.splits is None
    assert list(corpus.texts("validation")) == [d for d in documents[200:] if d.strip()]
    reader = StreamedBlocks(corpus.stream, tokenizer, T)
    expected = _reference_blocks(documents[:200], tokenizer, held_out=False)  # nothing held out
    assert torch.equal(reader.next_global_batch(50), expected.gather(range(50)))
    assert opened[:2] == ["train", "validation"] and set(opened) == {"train", "validation"}
    monkeypatch.undo()
    with pytest.raises(UsageError, match="'hf:layerwise/none': could not open the hub dataset"):
        load_corpus("hf:layerwise/none")
