"""Progress of the long steps outside training: downloads, tokenizer training, evaluation, depth
reports (training has its own bar in `layerwise.train.pretrain`).

Shown on stderr, by the main process only, and only when stderr is a terminal (tqdm's
`disable=None`), so logs, pipes and CI stay clean; `quiet=True` silences one call, and
`with silenced():` every bar beneath it, training's included (e.g. `run_quickstart(quiet=True)`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from layerwise_core import is_main_process

__all__ = ["is_silenced", "progress_bar", "shows_progress", "silenced", "stage"]

_SILENCED: ContextVar[bool] = ContextVar("layerwise_progress_silenced", default=False)


@contextlib.contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """Within the block, no progress output at all when `quiet` (nested blocks cannot undo it)."""
    token = _SILENCED.set(_SILENCED.get() or quiet)
    try:
        yield
    finally:
        _SILENCED.reset(token)


def is_silenced(quiet: bool = False) -> bool:
    """`quiet`, or inside `silenced()`."""
    return quiet or _SILENCED.get()


def shows_progress(quiet: bool = False) -> bool:
    """Whether progress is shown: not silenced, the main process, stderr a terminal."""
    return not is_silenced(quiet) and is_main_process() and sys.stderr.isatty()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    quiet: bool = False,
):
    """A tqdm bar on stderr (left in place with its count and time, as training's); a plain
    pass-through when not shown."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=True if is_silenced(quiet) or not is_main_process() else None,  # None: a terminal
    )


@contextlib.contextmanager
def stage(desc: str, quiet: bool = False) -> Iterator[None]:
    """A step of unknown length (a download): its name when it starts, its time when it ends."""
    show = shows_progress(quiet)
    if show:
        print(f"{desc} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    if show:
        print(f"{desc}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
