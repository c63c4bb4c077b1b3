"""Tokenized shards: written once, memory-mapped by later runs without calling the tokenizer,
keyed by the corpus content and the tokenizer; an interrupted write leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from layerwise.data import (
    DataConfig,
    pack_documents,
    prepare_data,
    token_shards_folder,
)


@pytest.fixture(scope="module")
def paragraphs(shakespeare):
    play = list(shakespeare.texts("train"))[2]
    return [p for p in play.split("\n\n") if p.strip()][:400]


def _write(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"text": texts}), path)
    return path


def _count_calls(monkeypatch, tokenizer_class) -> dict[str, int]:
    """Count the calls that encode text (`tokenizer(texts)`) on every tokenizer of the class."""
    calls = {"n": 0}
    encode = tokenizer_class.__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "__call__", counting)
    return calls


def test_second_prepare_maps_the_shards_without_tokenizing(paragraphs, tmp_path, monkeypatch):
    source = _write(tmp_path / "docs.parquet", paragraphs)
    cfg = DataConfig(source=f"parquet:{source}", vocab_size=300, cache_dir=str(tmp_path / "c"))
    first = prepare_data(cfg, block_size=32)
    calls = _count_calls(monkeypatch, type(first.tokenizer))
    folder = token_shards_folder(first.corpus, first.tokenizer, cfg.cache_dir)
    for path in folder.iterdir():  # as a fresh cache: tokenize again, counting the calls
        path.unlink()
    folder.rmdir()
    fresh = prepare_data(cfg, block_size=32)
    assert calls["n"] == 3  # 368 train documents in 2 calls (256 per call), 32 validation in 1
    calls["n"] = 0
    second = prepare_data(cfg, block_size=32)
    assert calls["n"] == 0
    for split in ("train", "validation"):
        a, b = getattr(fresh, split), getattr(second, split)
        assert len(a) == len(b) > 0
        assert a.gather(range(len(a))).tolist() == b.gather(range(len(b))).tolist()
        assert a.stream.tolist() == getattr(first, split).stream.tolist()

    # the files are raw int32, mapped into memory, and hold what packing the documents gives
    meta = json.loads((folder / "meta.json").read_text())
    maps = Path("/proc/self/maps").read_text()
    for split in ("train", "validation"):
        path = folder / f"{split}.bin"
        assert str(path) in maps
        assert path.stat().st_size == 4 * meta["tokens"][split]
        texts = list(second.corpus.texts(split))
        assert meta["documents"][split] == len(texts)
        ids = first.tokenizer(texts, add_special_tokens=False)["input_ids"]
        reference = pack_documents(ids, first.tokenizer.eos_token_id)
        assert np.fromfile(path, dtype="<i4").tolist() == reference.tolist()
        # int32 on disk and in the stream; blocks come out int64 (cross-entropy targets)
        assert getattr(second, split).stream.dtype == torch.int32
        assert getattr(second, split).gather([0]).dtype == torch.int64


def test_shards_are_keyed_by_content_and_tokenizer(paragraphs, tmp_path, monkeypatch):
    cache = str(tmp_path / "c")
    source = _write(tmp_path / "docs.parquet", paragraphs)
    base = prepare_data(DataConfig(source=f"parquet:{source}", vocab_size=300, cache_dir=cache), 32)
    other_vocab = prepare_data(
        DataConfig(source=f"parquet:{source}", vocab_size=320, cache_dir=cache), 32
    )
    # a saved copy of the same tokenizer, named by a path: same definition, same shards
    base.tokenizer.save_pretrained(tmp_path / "tok")
    cfg = DataConfig(source=f"parquet:{source}", tokenizer=str(tmp_path / "tok"), cache_dir=cache)
    calls = _count_calls(monkeypatch, type(base.tokenizer))
    same = prepare_data(cfg, 32)
    assert calls["n"] == 0 and same.train.stream.tolist() == base.train.stream.tolist()
    edited = list(paragraphs)
    edited[3] = edited[3] + " Exeunt."  # one document changed: the corpus content changed
    _write(source, edited)
    changed = prepare_data(cfg, 32)
    assert calls["n"] > 0
    folders = {
        token_shards_folder(d.corpus, d.tokenizer, cache) for d in (base, other_vocab, changed)
    }
    assert len(folders) == 3 and token_shards_folder(same.corpus, same.tokenizer, cache) in folders
    assert sorted(p.name for p in (tmp_path / "c" / "token-shards").iterdir()) == sorted(
        f.name for f in folders
    )


def test_an_interrupted_tokenization_leaves_nothing(paragraphs, tmp_path, monkeypatch):
    source = _write(tmp_path / "docs.parquet", paragraphs * 2)  # 800 documents: 4 batches
    cfg = DataConfig(source=f"parquet:{source}", vocab_size=300, cache_dir=str(tmp_path / "c"))
    data = prepare_data(cfg, 32)
    shards = tmp_path / "c" / "token-shards"
    [folder] = shards.iterdir()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    calls = {"n": 0}
    encode = type(data.tokenizer).__call__

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while the train split is half written
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(type(data.tokenizer), "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, 32)
    assert list(shards.iterdir()) == []
    monkeypatch.undo()
    again = prepare_data(cfg, 32)
    assert again.train.stream.tolist() == data.train.stream.tolist()
