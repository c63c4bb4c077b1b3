"""Run folders: one writer at a time, and no leftovers of killed writes.

    with lock_run_folder(out_dir):          # refuses at once if another run holds out_dir
        remove_temp_leftovers(out_dir)      # debris of a writer killed mid-write
        ...                                 # train, write checkpoints and reports

The lock is an exclusive `fcntl.flock` on `out_dir/.lock`, held for the whole run; the file holds
the pid, host and command of the holder for the message a second writer gets. The kernel drops
the lock when the process ends, however it ends (SIGKILL included), so a lock is never stale: the
`.lock` of a killed run stays behind, unlocked, and the next run takes it. A run that ends
normally deletes it (while still holding it; a waiter that opened the deleted file notices and
retries on the new one), and removes the folder again if it created it and wrote nothing else.
In a multi-process (torchrun / DDP) run only rank 0 takes the lock and every rank learns the
outcome, so all of them stop together when the folder is taken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from layerwise_core.distributed import broadcast_object, is_distributed, is_main_process
from layerwise_core.errors import UsageError

__all__ = [
    "LOCK_FILE",
    "RunFolderBusyError",
    "RunFolderError",
    "lock_run_folder",
    "remove_temp_leftovers",
]

LOCK_FILE = ".lock"
# what an interrupted atomic write leaves: `atomic_write`'s `.<name>.<random>.tmp` files, the
# `.<name>.<random>.tmp` folders of atomic directories and the `.step_N.tmp` checkpoint folders
_TEMP = re.compile(r"^\..+\.tmp$")


class RunFolderError(UsageError):
    """The run folder of a configuration cannot be used as asked (it holds a run, it is in use, a
    resume would change the run); the one-line message names the fix."""


class RunFolderBusyError(RunFolderError):
    """Another process holds the run folder's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = info.get("started", "?")
    return f"pid {info['pid']} on {info.get('host', '?')}, since {since}"


def _acquire(folder: Path) -> tuple[int | None, str | None]:
    """(file descriptor holding the lock, None) or (None, the refusal message)."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            return None, (
                f"{folder} is in use by another layerwise run ({_holder(path)}): wait for it to "
                "finish or choose another output folder"
            )
        try:  # the previous holder may have deleted the file between our open and our flock
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    # written in place: replacing the file would give a second writer another inode to lock
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd, None


@contextlib.contextmanager
def lock_run_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of `folder` (created if missing) for the `with` block.

    A second holder, in this process or any other, gets `RunFolderBusyError` at once with the
    first holder's pid and host. On exit the lock file is deleted, and so is `folder` if this call
    created it and nothing else was written (a run refused for bad input leaves no trace).
    Collective in a multi-process run: call it on every rank.
    """
    folder = Path(folder)
    fd, refusal, created = None, None, False
    if is_main_process():
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd, refusal = _acquire(folder)
    if is_distributed():
        refusal = broadcast_object(refusal)
    if refusal is not None:
        raise RunFolderBusyError(refusal)
    try:
        yield folder
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / LOCK_FILE)  # before unlocking: see _acquire
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something
                    folder.rmdir()


def remove_temp_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed atomic writes left directly in `folder` (`.<name>...tmp` files and
    folders); returns what was removed. Call it while holding the folder's lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not _TEMP.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
