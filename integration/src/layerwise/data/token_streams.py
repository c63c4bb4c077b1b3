"""Tokenize each split of a corpus into one packed stream (see `packing`), cached by content.

The cache key is the corpus fingerprint plus a hash of the tokenizer's full definition, so a
different corpus, tokenizer or vocabulary size never reuses a stale stream.
"""

from __future__ import annotations

import hashlib
import os
from itertools import islice
from pathlib import Path

import torch

from layerwise.data.cache import cache_root
from layerwise.data.corpus import Corpus
from layerwise.data.packing import pack_documents
from layerwise_core import load_safetensors, save_safetensors

__all__ = ["token_streams", "tokenizer_fingerprint"]

_BATCH_DOCS = 256


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's serialized definition (vocabulary, merges, specials, pipeline)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # slow (python) tokenizers: their vocabulary is what encodes
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}\x00{tokenizer.eos_token_id}".encode()).hexdigest()


def _encode(corpus: Corpus, split: str, tokenizer) -> torch.Tensor:
    texts = corpus.texts(split)

    def batches():
        while batch := list(islice(texts, _BATCH_DOCS)):
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]

    return pack_documents(batches(), tokenizer.eos_token_id)


def token_streams(
    corpus: Corpus, tokenizer, cache: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """`{"train": stream, "validation": stream}`: int64 token streams, documents joined by EOS."""
    key = hashlib.sha256(f"{corpus.fingerprint}\x00{tokenizer_fingerprint(tokenizer)}".encode())
    path = (Path(cache) if cache is not None else cache_root()) / "token-streams"
    path = path / f"{key.hexdigest()[:24]}.safetensors"
    if path.is_file():
        tensors, _ = load_safetensors(path)
        return {name: t.to(torch.int64) for name, t in tensors.items()}
    streams = {split: _encode(corpus, split, tokenizer) for split in ("train", "validation")}
    # stored as int32 (vocabularies are far below 2**31): half the disk, same values
    save_safetensors(
        {name: s.to(torch.int32) for name, s in streams.items()},
        path,
        metadata={"corpus": corpus.source.spec, "tokenizer": tokenizer.name_or_path or "bpe"},
    )
    return streams
