"""Tokenize each split of a corpus into one packed stream (see `packing`), cached memory-mapped.

Each split is tokenized once, `_BATCH_DOCS` documents at a time, and written straight to disk as
raw little-endian int32 (`<split>.bin`, documents joined by EOS) beside a `meta.json` with the
token counts, in a folder under `<cache>/token-shards/` keyed by the corpus fingerprint and a hash
of the tokenizer's full definition, so a different corpus, tokenizer or vocabulary size never
reuses a stale stream. A later run maps the files into memory (`numpy.memmap`, copy-on-write):
nothing is re-tokenized and nothing is read until a block is used, however large the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch

from layerwise.data.cache import atomic_directory, cache_root
from layerwise.data.corpus import Corpus

__all__ = ["token_shards_folder", "token_streams", "tokenizer_fingerprint"]

_BATCH_DOCS = 256
_FORMAT = "int32-v1"  # bump when the file layout changes, to invalidate cached shards
_DTYPE = np.dtype("<i4")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's serialized definition (vocabulary, merges, specials, pipeline)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # slow (python) tokenizers: their vocabulary is what encodes
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}\x00{tokenizer.eos_token_id}".encode()).hexdigest()


def token_shards_folder(
    corpus: Corpus,
    tokenizer,
    cache: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "validation"),
) -> Path:
    """The cache folder of `splits` of `corpus` tokenized by `tokenizer` (may not exist yet)."""
    key = "\x00".join((_FORMAT, corpus.fingerprint, tokenizer_fingerprint(tokenizer), *splits))
    root = (Path(cache) if cache is not None else cache_root()) / "token-shards"
    return root / hashlib.sha256(key.encode()).hexdigest()[:24]


def _write_split(corpus: Corpus, split: str, tokenizer, path: Path) -> tuple[int, int]:
    """Tokenize `split` into `path`; (tokens, documents) written."""
    texts = corpus.texts(split)
    tokens = documents = 0
    with path.open("wb") as handle:
        while batch := list(islice(texts, _BATCH_DOCS)):
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
            flat = chain.from_iterable((*doc, tokenizer.eos_token_id) for doc in ids)
            array = np.fromiter(flat, dtype=_DTYPE)
            array.tofile(handle)
            tokens += array.size
            documents += len(batch)
    return tokens, documents


def _map(path: Path, tokens: int) -> torch.Tensor:
    if tokens == 0:  # an empty file cannot be mapped
        return torch.empty(0, dtype=torch.int32)
    # copy-on-write: a writable view (torch warns on read-only arrays), the file never changes
    return torch.from_numpy(np.memmap(path, dtype=_DTYPE, mode="c", shape=(tokens,)))


def token_streams(
    corpus: Corpus,
    tokenizer,
    cache: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "validation"),
) -> dict[str, torch.Tensor]:
    """`{split: stream}`: int32 token streams, documents joined by EOS, memory-mapped from the
    cache (tokenized and written on the first call)."""
    folder = token_shards_folder(corpus, tokenizer, cache, splits)
    if not (folder / "meta.json").is_file():
        with atomic_directory(folder) as tmp:
            meta = {"format": _FORMAT, "dtype": "int32", "corpus": corpus.source.spec}
            meta.update(tokenizer=tokenizer.name_or_path or "bpe", tokens={}, documents={})
            for split in splits:
                tokens, documents = _write_split(corpus, split, tokenizer, tmp / f"{split}.bin")
                meta["tokens"][split] = tokens
                meta["documents"][split] = documents
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    meta = json.loads((folder / "meta.json").read_text())
    return {split: _map(folder / f"{split}.bin", meta["tokens"][split]) for split in splits}
