"""Where downloaded corpora, trained tokenizers and tokenized corpora live, and how they get there.

Everything is keyed by content, written into a temporary directory next to its final place and
renamed when complete, so an interrupted download or training never leaves a half-made entry that
a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_directory", "cache_root"]


def cache_root() -> Path:
    """`$LAYERWISE_CACHE` if set, else `~/.cache/layerwise`."""
    env = os.environ.get("LAYERWISE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "layerwise"


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it is renamed onto `target`.

    On an exception the temporary directory is removed and `target` is left as it was. If another
    process completed `target` meanwhile, its copy wins and ours is discarded (both hold the same
    content: entries are keyed by content).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
