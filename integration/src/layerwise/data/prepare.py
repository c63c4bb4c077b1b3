"""From a `DataConfig` to training and validation blocks: corpus -> tokenizer -> streams -> blocks.

A corpus held in memory is tokenized once into memory-mapped shards (`token_streams`) and its
train blocks are read in a seeded random order (`ShuffledBlocks`); a streamed corpus
(`hf:`, `data.streaming=true`) caches only its validation split and packs its train split on the
fly (`StreamedBlocks`). The training loop sees either through `PreparedData.training_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerwise.data.config import DataConfig
from layerwise.data.corpus import Corpus, load_corpus
from layerwise.data.packing import PackedBlocks, ShuffledBlocks, TrainingBatches
from layerwise.data.streaming import DocumentStream, StreamedBlocks
from layerwise.data.token_streams import token_streams
from layerwise.data.tokenizer import load_tokenizer
from layerwise_core import UsageError

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    corpus: Corpus
    tokenizer: Any  # a transformers PreTrainedTokenizer(Fast)
    train: PackedBlocks | DocumentStream  # a streamed corpus: its documents, packed when read
    validation: PackedBlocks

    def training_batches(self, seed: int, global_batch: int) -> TrainingBatches:
        """A fresh reader of the train split from its start: `next_global_batch(n)`,
        `state_dict()`, `load_state_dict()`. Blocks in memory come in the order seeded by `seed`;
        a stream in stream order. A global batch larger than the blocks in memory is refused."""
        if isinstance(self.train, PackedBlocks):
            return ShuffledBlocks(self.train, seed, global_batch)
        return StreamedBlocks(self.train, self.tokenizer, self.validation.block_size)


def prepare_data(cfg: DataConfig, block_size: int) -> PreparedData:
    """Load (and cache) everything a run reads; cheap after the first call with the same config.

    A split too short for one block of `block_size + 1` tokens is a `UsageError` (for a stream:
    its validation split; the train stream starts over when it ends)."""
    corpus = load_corpus(
        cfg.source,
        cfg.val_fraction,
        cfg.max_documents,
        cfg.cache_dir,
        text_field=cfg.text_field,
        streaming=cfg.streaming,
    )
    tokenizer = load_tokenizer(cfg.tokenizer, corpus, cfg.vocab_size, cfg.cache_dir)
    names = ("validation",) if corpus.stream is not None else ("train", "validation")
    streams = token_streams(corpus, tokenizer, cfg.cache_dir, names)
    if cfg.max_train_tokens is not None:
        if corpus.stream is not None:
            raise UsageError(
                "data.max_train_tokens caps a train split held in memory, and this corpus is "
                "streamed: use data.streaming=false (a local corpus), or unset data.max_train_tokens"
            )
        # N unique tokens: blocks of T + 1 share their boundary token, so N + 1 of the stream
        streams = {**streams, "train": streams["train"][: cfg.max_train_tokens + 1]}
    splits = {name: PackedBlocks(streams[name], block_size) for name in names}
    for name, blocks in splits.items():
        if len(blocks) == 0:
            more = "raise data.val_fraction, " if name == "validation" else ""
            raise UsageError(
                f"the {name} split of corpus '{corpus.source.spec}' holds {len(blocks.stream)} "
                f"tokens, fewer than one block of train.block_size + 1 = {block_size + 1}: "
                f"{more}add text or lower train.block_size"
            )
    train = corpus.stream if corpus.stream is not None else splits["train"]
    return PreparedData(corpus, tokenizer, train, splits["validation"])
