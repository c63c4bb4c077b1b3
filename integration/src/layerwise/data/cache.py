"""Where downloaded corpora, trained tokenizers and tokenized corpora live, and how they get there.

Everything is keyed by content, written into a temporary directory next to its final place and
renamed when complete, so an interrupted download or training never leaves a half-made entry that
a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_directory", "cache_root", "pip_download"]


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


def pip_download(
    requirement: str, downloads: str | os.PathLike, pattern: str, *, sdist: bool = False
) -> Path:
    """The file matching `pattern` that `pip download --no-deps requirement` fetches, kept in
    `downloads` (fetched once; later calls return the cached file).

    pip writes into a temporary folder next to `downloads` and the file is moved in when complete,
    so an interrupted download leaves nothing. `sdist=True` asks for the source distribution. On
    failure the error gives pip's reason and the manual fix.
    """
    downloads = Path(downloads)
    found = sorted(downloads.glob(pattern))
    if found:
        return found[-1]
    downloads.mkdir(parents=True, exist_ok=True)
    flags = ["--no-deps", *(["--no-binary", ":all:"] if sdist else [])]
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", *flags, "--disable-pip-version-check"]
        cmd += ["-q", requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            proc, reason = None, str(err)
        else:
            reason = (proc.stderr or proc.stdout).strip()[-2000:]
        got = sorted(Path(tmp).glob(pattern))
        if proc is None or proc.returncode != 0 or not got:
            raise RuntimeError(
                f"could not download {requirement} from the package index "
                f"({reason or 'pip gave no file matching ' + pattern}). Fix: allow pip to reach "
                f"PyPI (or set PIP_INDEX_URL to a mirror), or fetch it elsewhere with `python -m "
                f"pip download {' '.join(flags)} {requirement} -d DIR` and copy DIR/{pattern} to "
                f"{downloads / pattern}"
            )
        target = downloads / got[-1].name
        os.replace(got[-1], target)
    return target
