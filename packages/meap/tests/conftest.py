"""Offline Hugging Face libraries and a small real byte-level BPE tokenizer (no [MASK] yet)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pydoc
import random

import pytest

# real English prose shipped with Python: the documentation of a few standard-library modules
_DOC_MODULES = ("random", "string", "json", "argparse", "collections", "itertools", "functools")


def english_text() -> list[str]:
    import importlib

    return [pydoc.getdoc(importlib.import_module(name)) for name in _DOC_MODULES]


@pytest.fixture(scope="session")
def bpe_tokenizer_factory():
    """Returns a fresh `PreTrainedTokenizerFast` (byte-level BPE, vocab <= 400) on every call."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = english_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    serialized = tok.to_str()

    def make():
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(serialized),
            eos_token="<|endoftext|>",
            pad_token="<|pad|>",
            clean_up_tokenization_spaces=False,
        )

    return make


@pytest.fixture(scope="session")
def official_inputs():
    """The official loop (scitix/MEAP meap_*.py train()) on a batch of (T + 1)-token blocks:
    input_ids = train_data[:, :T]; random.seed(50 + step % 51); input_ids[:, pos] = 127 ([MASK])."""

    def make(train_data, ratio: float, step: int, mask_id: int = 127):
        block_size = train_data.shape[1] - 1
        input_ids = train_data[:, 0:block_size].clone()
        state = random.getstate()
        random.seed(50 + step % 51)
        pos = random.sample(range(0, block_size - 1), max(1, int(block_size * ratio)))
        random.setstate(state)
        input_ids[:, pos] = mask_id
        return input_ids

    return make
