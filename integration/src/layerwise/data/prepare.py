"""From a `DataConfig` to training and validation blocks: corpus -> tokenizer -> streams -> blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerwise.data.config import DataConfig
from layerwise.data.corpus import Corpus, load_corpus
from layerwise.data.packing import PackedBlocks
from layerwise.data.token_streams import token_streams
from layerwise.data.tokenizer import load_tokenizer
from layerwise_core import UsageError

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    corpus: Corpus
    tokenizer: Any  # a transformers PreTrainedTokenizer(Fast)
    train: PackedBlocks
    validation: PackedBlocks


def prepare_data(cfg: DataConfig, block_size: int) -> PreparedData:
    """Load (and cache) everything a run reads; cheap after the first call with the same config.

    A split too short for one block of `block_size + 1` tokens is a `UsageError`."""
    corpus = load_corpus(cfg.source, cfg.val_fraction, cfg.max_documents, cfg.cache_dir)
    tokenizer = load_tokenizer(cfg.tokenizer, corpus, cfg.vocab_size, cfg.cache_dir)
    streams = token_streams(corpus, tokenizer, cfg.cache_dir)
    splits = {name: PackedBlocks(streams[name], block_size) for name in ("train", "validation")}
    for name, blocks in splits.items():
        if len(blocks) == 0:
            more = "raise data.val_fraction, " if name == "validation" else ""
            raise UsageError(
                f"the {name} split of corpus '{corpus.source.spec}' holds {len(blocks.stream)} "
                f"tokens, fewer than one block of train.block_size + 1 = {block_size + 1}: "
                f"{more}add text or lower train.block_size"
            )
    return PreparedData(corpus, tokenizer, splits["train"], splits["validation"])
