"""Data for layerwise runs: corpora, tokenizers, packing into blocks, resumable block order, streams."""

from layerwise.data.cache import atomic_directory, cache_root
from layerwise.data.config import DataConfig
from layerwise.data.corpus import Corpus, CorpusSource, load_corpus, parse_source
from layerwise.data.packing import (
    BlockSampler,
    DataPosition,
    PackedBlocks,
    ShuffledBlocks,
    TrainingBatches,
    epoch_permutation,
    pack_documents,
)
from layerwise.data.prepare import PreparedData, prepare_data
from layerwise.data.shakespeare import fetch_shakespeare, shakespeare_texts
from layerwise.data.split import hash_fraction, validation_keys
from layerwise.data.streaming import DocumentStream, StreamedBlocks
from layerwise.data.token_streams import token_shards_folder, token_streams, tokenizer_fingerprint
from layerwise.data.tokenizer import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "BlockSampler",
    "Corpus",
    "CorpusSource",
    "DataConfig",
    "DataPosition",
    "DocumentStream",
    "PackedBlocks",
    "PreparedData",
    "ShuffledBlocks",
    "StreamedBlocks",
    "TrainingBatches",
    "atomic_directory",
    "cache_root",
    "epoch_permutation",
    "fetch_shakespeare",
    "hash_fraction",
    "load_corpus",
    "load_tokenizer",
    "pack_documents",
    "parse_source",
    "prepare_data",
    "shakespeare_texts",
    "token_shards_folder",
    "token_streams",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "validation_keys",
]
