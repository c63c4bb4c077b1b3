"""Tokenizers: a byte-level BPE trained on the corpus's train split, or any Hugging Face tokenizer.

`data.tokenizer` is `bpe` (train one), a local folder a tokenizer was saved in
(`save_pretrained`: a run's `final/`, a downloaded hub tokenizer such as SmolLM2's, one made by
`train_bpe_tokenizer`), or, online, a hub tokenizer name. A folder is only read from disk; one
that holds no tokenizer, or one without an EOS token, is a one-line `UsageError` naming the fix.

The trained tokenizer is GPT-2 style byte-level BPE (no normalisation, no unknown token: every
UTF-8 string encodes and decodes back exactly), with special tokens `<|endoftext|>` (EOS, joins
documents), `<|pad|>` and `[MASK]` (for masked objectives). It is wrapped as a
`transformers.PreTrainedTokenizerFast` and cached under `<cache>/tokenizers/`, keyed by the corpus
content and the vocabulary size, so `AutoTokenizer.from_pretrained(path)` reloads it unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from layerwise._progress import shows_progress
from layerwise.data.cache import atomic_directory, cache_root
from layerwise.data.corpus import Corpus
from layerwise_core import UsageError, load_tokenizer_folder

__all__ = ["EOS_TOKEN", "MASK_TOKEN", "PAD_TOKEN", "load_tokenizer", "train_bpe_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "[MASK]"
_BPE_FORMAT = "bpe-v1"  # bump when the training recipe changes, to invalidate cached tokenizers
# files one of which a saved Hugging Face tokenizer folder holds
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
_FOLDER_FIX = (
    "pass a folder a tokenizer was saved in (tokenizer.save_pretrained(DIR): e.g. a run's final/ "
    "or a downloaded hub tokenizer), or data.tokenizer=bpe to train one"
)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2, *, quiet: bool = False
):
    """Train a byte-level BPE on `texts`; returns a `PreTrainedTokenizerFast`. Shows the trainer's
    progress on stderr when it is a terminal, unless `quiet`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN]
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + len(specials):
        raise ValueError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
            f"{len(byte_alphabet) + len(specials)} (256 bytes + special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=byte_alphabet,
        show_progress=shows_progress(quiet),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(
    name: str,
    corpus: Corpus | None = None,
    vocab_size: int = 4096,
    cache: str | os.PathLike | None = None,
    *,
    quiet: bool = False,
):
    """`name="bpe"`: the BPE trained on `corpus`'s train split (cached; training shows progress
    on a terminal unless `quiet`); else a local tokenizer folder or a hub tokenizer name.

    A tokenizer without an EOS token gets none invented: packing needs one, so we refuse it.
    """
    from transformers import AutoTokenizer

    if name != "bpe":
        tokenizer = _load_named(name)
        if tokenizer.eos_token_id is None:
            raise UsageError(
                f"data.tokenizer {name!r} has no EOS token, which packing needs between "
                "documents: use a tokenizer that defines eos_token, or data.tokenizer=bpe"
            )
        return tokenizer
    if corpus is None:
        raise ValueError("load_tokenizer('bpe') trains on a corpus: pass corpus=load_corpus(...)")
    key = hashlib.sha256(f"{_BPE_FORMAT}\x00{corpus.fingerprint}\x00{vocab_size}".encode())
    folder = (Path(cache) if cache is not None else cache_root()) / "tokenizers"
    folder = folder / f"bpe{vocab_size}-{key.hexdigest()[:20]}"
    if not folder.is_dir():
        tokenizer = train_bpe_tokenizer(corpus.texts("train"), vocab_size, quiet=quiet)
        with atomic_directory(folder) as tmp:
            tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(folder)


def _is_path(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith(("/", "./", "../", "~"))


def _load_named(name: str):
    """A tokenizer from a local folder (anything that exists or is written as a path), else from
    the hub by name."""
    from transformers import AutoTokenizer

    if _is_path(name):
        folder = Path(name).expanduser()
        if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            found = sorted(p.name for p in folder.iterdir())
            listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "") or "nothing"
            raise UsageError(
                f"data.tokenizer {name!r} holds no tokenizer files (none of "
                f"{', '.join(_TOKENIZER_FILES[:4])}; it holds {listed}): {_FOLDER_FIX}"
            )
        try:
            return load_tokenizer_folder(folder, "data.tokenizer", _FOLDER_FIX)
        except UsageError:
            raise
        except Exception as err:  # a damaged tokenizer.json surfaces as KeyError and others
            raise UsageError(
                f"data.tokenizer {name!r} holds no tokenizer it can load ({type(err).__name__}: "
                f"{err}): {_FOLDER_FIX}"
            ) from err
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:  # nothing there, offline, or no tokenizer files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        local = f"tokenizers/{name.rsplit('/', 1)[-1]}"
        raise UsageError(
            f"data.tokenizer {name!r} is no local folder and could not be loaded from the "
            f"Hugging Face hub ({reason}): download it first (`hf download {name} --local-dir "
            f"{local}`) and pass data.tokenizer={local}, or data.tokenizer=bpe to train one"
        ) from err
