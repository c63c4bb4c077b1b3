import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from layerwise_core import ResidualStream

WORDS = [*(str(i) for i in range(20)), "plus", "is", "the", "a", "cat", "dog", "sat", "on", "mat"]


def make_tokenizer():
    """A word-level tokenizer over a 32-word vocabulary (ids < 128, the tiny models' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def _stream_from_hidden(hidden: list[torch.Tensor], attn=None, mlp=None) -> ResidualStream:
    """A core ResidualStream built by hand from h_0..h_L (and optional a_l, m_l)."""
    num = len(hidden) - 1
    return ResidualStream(
        inputs=list(hidden[:-1]),
        attn_outputs=list(attn) if attn is not None else [None] * num,
        mlp_outputs=list(mlp) if mlp is not None else [None] * num,
        outputs=list(hidden[1:]),
        layers=list(range(num)),
    )


def _identity_blocks(model, indices):
    """Zero the attention output and MLP down projections: those blocks compute h_{l+1} = h_l."""
    with torch.no_grad():
        for i in indices:
            block = model.model.layers[i]
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


@pytest.fixture
def stream_from_hidden():
    return _stream_from_hidden


@pytest.fixture
def identity_blocks():
    return _identity_blocks


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small tensor ops: on a shared 2-core machine a second
    thread only adds contention); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
