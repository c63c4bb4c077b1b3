"""Data for layerwise runs: corpora, tokenizers, packing into blocks, resumable block order."""

from layerwise.data.cache import atomic_directory, cache_root
from layerwise.data.config import DataConfig
from layerwise.data.corpus import Corpus, CorpusSource, load_corpus, parse_source
from layerwise.data.packing import (
    BlockSampler,
    DataPosition,
    PackedBlocks,
    epoch_permutation,
    pack_documents,
)
from layerwise.data.prepare import PreparedData, prepare_data
from layerwise.data.shakespeare import fetch_shakespeare, shakespeare_texts
from layerwise.data.split import hash_fraction, validation_keys
from layerwise.data.token_streams import token_streams, tokenizer_fingerprint
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
    "PackedBlocks",
    "PreparedData",
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
    "token_streams",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "validation_keys",
]
