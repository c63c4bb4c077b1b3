"""`DataConfig`: where the text comes from, how it is tokenized and split (the `data:` section)."""

from __future__ import annotations

from pydantic import Field

from layerwise_core import LayerwiseConfig

__all__ = ["DataConfig"]


class DataConfig(LayerwiseConfig):
    # corpus: shakespeare | text:PATH | jsonl:PATH[:FIELD] | parquet:PATH[:FIELD] |
    # arrow:PATH[:FIELD] | hf:ORG/NAME[:CONFIG]  (PATH: a file, a folder or a glob)
    source: str = "shakespeare"
    # column holding the text (jsonl / parquet / arrow / hf); None: the spec's :FIELD, else "text"
    text_field: str | None = None
    # read the train split as a stream, tokenized and packed on the fly, its position saved in
    # checkpoints (hf: sources always stream); else tokenized once, cached, shuffled by block
    streaming: bool = False
    # "bpe": byte-level BPE trained on the train split; else a local tokenizer folder (e.g. a
    # run's final/ or a downloaded hub tokenizer) or, online, a Hugging Face hub tokenizer name
    tokenizer: str = "bpe"
    vocab_size: int = Field(4096, ge=262)  # BPE vocabulary size (256 bytes + specials at least)
    val_fraction: float = Field(0.08, gt=0.0, lt=1.0)  # share of documents held out for validation
    # keep only the first N documents (quick runs); a stream: its first N rows, and BPE trains on
    # the first N (10,000 if unset) of the stream
    max_documents: int | None = Field(None, ge=2)
    # keep only the first N tokens of the train split (its blocks repeat epoch after epoch: N
    # unique tokens, e.g. the overtraining arm of docs/studies.md); None: all. Not for a stream
    max_train_tokens: int | None = Field(None, ge=2)
    # corpora, tokenizers, token shards; default $LAYERWISE_CACHE or ~/.cache/layerwise
    cache_dir: str | None = None
