"""Checks of what users hand to a command: model folders, JSON-lines files, tokenizer/model pairs.

Each raises a `UsageError` whose one-line message names the path (and the line) and the fix, so
that every command reports the same mistake in the same words.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from layerwise_core.errors import MissingPathError, UsageError

__all__ = [
    "check_tokenizer_fits",
    "load_tokenizer_folder",
    "read_json_lines",
    "require_model_folder",
    "vocabulary_size",
]

# what `from_pretrained` would take for a hub repository: "org/name", no leading "." or "/"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _require_folder(path: str | os.PathLike, what: str, holds: str, fix: str) -> Path:
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise MissingPathError(f"{what} {str(path)!r} is a file, not a folder: {fix}")
    if _HUB_ID.fullmatch(str(path)):
        local = f"models/{str(path).rsplit('/', 1)[1]}"
        raise MissingPathError(
            f"{what} {str(path)!r} is not a local folder (it looks like a Hugging Face hub id, and "
            f"{holds} are only read from disk): download it first, e.g. `hf download {path} "
            f"--local-dir {local}`, then pass {local}"
        )
    raise MissingPathError(f"{what} {str(path)!r} does not exist: {fix}")


def require_model_folder(path: str | os.PathLike, what: str = "model") -> Path:
    """`path` as a folder holding a saved Hugging Face model (`config.json`), or a `MissingPathError`
    that says what is there instead: nothing, a file, a folder without config.json, or a hub id
    typed where a folder is expected (models are never downloaded at load time here).

    `what` names the setting in the message: `"--model"`, `"model.path"`.
    """
    fix = "pass the folder that holds config.json (e.g. a run's final/)"
    folder = _require_folder(path, what, "models", fix)
    if not (folder / "config.json").is_file():
        raise MissingPathError(
            f"{what} {str(path)!r} has no config.json, so it is not a saved Hugging Face model: {fix}"
        )
    return folder


def load_tokenizer_folder(path: str | os.PathLike, what: str = "tokenizer", fix: str = ""):
    """`AutoTokenizer.from_pretrained(path)` for a local folder; a missing folder, a hub id or a
    folder without tokenizer files is a `UsageError` naming `what` (`"--tokenizer"`) and `fix`."""
    fix = fix or "pass a folder that holds tokenizer.json (e.g. a run's final/)"
    folder = _require_folder(path, what, "tokenizers", fix)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:  # no tokenizer files, or files it cannot read
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"{what} {str(path)!r} holds no tokenizer it can load ({reason}): {fix}"
        ) from err


def read_json_lines(
    path: str | os.PathLike, what: str = "file"
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file.

    A missing file, a line that is not JSON, or a line that is not an object is a `UsageError`
    naming `path:line` (numbers count from 1, blank lines included, as editors count them).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"{what} {str(path)!r} does not exist: pass a JSON-lines file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason}): save the file as UTF-8") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}): fix that "
                "line (one JSON object per line)"
            ) from None
        if not isinstance(row, dict):
            raise UsageError(
                f"{path}:{number}: expected a JSON object, got {type(row).__name__}: write one "
                '{"field": value, ...} object per line'
            )
        rows.append((number, row))
    return rows


def vocabulary_size(model: Any) -> int | None:
    """Rows of `model`'s token embedding: an `int` itself, a saved model folder's config.json
    `vocab_size` (nothing loaded), a module's input embedding (else `config.vocab_size`), or a
    config's `vocab_size`; None when none of these tells."""
    if isinstance(model, int):
        return model
    if isinstance(model, (str, os.PathLike)):  # a saved model folder: its config.json, unloaded
        config = json.loads((Path(model) / "config.json").read_text())
        vocab = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
        return vocab if isinstance(vocab, int) else None
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if isinstance(embedding, nn.Embedding):
        return embedding.num_embeddings
    vocab = getattr(getattr(model, "config", model), "vocab_size", None)
    return vocab if isinstance(vocab, int) else None


def check_tokenizer_fits(
    tokenizer: Any, model: Any, *, tokenizer_name: str = "tokenizer", fix: str | None = None
) -> None:
    """Refuse a tokenizer with more ids than the model has embedding rows: its extra ids would
    index past the embedding table deep inside the forward pass. A model with more rows than the
    tokenizer has ids (padded vocabularies) is fine.

    `model`: a module (its input embedding, else `config.vocab_size`), a config, a saved model
    folder (its config.json, so the check runs before the weights load) or the row count.
    """
    rows = vocabulary_size(model)
    size = len(tokenizer)
    if rows is not None and size > rows:
        raise UsageError(
            f"{tokenizer_name} has {size} tokens but the model embeds only {rows} (ids {rows}.."
            f"{size - 1} would index past its embedding table): "
            + (fix or "use the tokenizer the model was trained with")
        )
