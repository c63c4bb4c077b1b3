"""`DataConfig`: where the text comes from, how it is tokenized and split (the `data:` section)."""

from __future__ import annotations

from pydantic import Field

from layerwise_core import LayerwiseConfig

__all__ = ["DataConfig"]


class DataConfig(LayerwiseConfig):
    # corpus: shakespeare | text:PATH | jsonl:PATH[:FIELD] | hf:ORG/NAME[:CONFIG]
    source: str = "shakespeare"
    # "bpe": byte-level BPE trained on the train split; else a Hugging Face tokenizer name/path
    tokenizer: str = "bpe"
    vocab_size: int = Field(4096, ge=262)  # BPE vocabulary size (256 bytes + specials at least)
    val_fraction: float = Field(0.08, gt=0.0, lt=1.0)  # share of documents held out for validation
    max_documents: int | None = Field(None, ge=2)  # keep only the first N documents (quick runs)
    # corpora, tokenizers, token streams; default $LAYERWISE_CACHE or ~/.cache/layerwise
    cache_dir: str | None = None
