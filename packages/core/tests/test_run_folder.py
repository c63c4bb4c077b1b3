"""Run-folder locks (one writer at a time, never stale) and removal of killed writes' leftovers."""

import json
import os
import subprocess
import sys
import time

import pytest

from layerwise_core import (
    RunFolderBusyError,
    UsageError,
    atomic_write,
    lock_run_folder,
    remove_temp_leftovers,
)


def test_second_holder_is_refused_at_once_and_the_lock_comes_back(tmp_path):
    with lock_run_folder(tmp_path / "run") as folder:
        info = json.loads((folder / ".lock").read_text())
        assert info["pid"] == os.getpid()
        t0 = time.perf_counter()
        with pytest.raises(RunFolderBusyError) as err, lock_run_folder(tmp_path / "run"):
            pass
        assert time.perf_counter() - t0 < 1.0  # refused, not waited for
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and str(tmp_path / "run") in message
        assert "\n" not in message and isinstance(err.value, UsageError)
    with lock_run_folder(tmp_path / "run"):  # released on exit
        (tmp_path / "run" / "metrics.jsonl").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]


def test_a_refused_run_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="bad input"), lock_run_folder(tmp_path / "a" / "run"):
        raise ValueError("bad input")
    assert not (tmp_path / "a" / "run").exists()
    (tmp_path / "b").mkdir()  # a folder that existed stays, without a lock file
    with lock_run_folder(tmp_path / "b"):
        pass
    assert list((tmp_path / "b").iterdir()) == []


def test_a_lock_file_deleted_by_its_holder_is_not_locked_by_a_late_opener(tmp_path, monkeypatch):
    """A waiter that opened `.lock` just before the holder deleted it locks the new file."""
    import layerwise_core.run_folder as run_folder

    real_open, opened = os.open, []

    def open_then_holder_finishes(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:  # the first open: the holder deletes the file now
            opened.append(fd)
            os.unlink(path)
        return fd

    monkeypatch.setattr(run_folder.os, "open", open_then_holder_finishes)
    with lock_run_folder(tmp_path) as folder:
        monkeypatch.undo()
        # the lock is on the file now at .lock, so a second locker is refused
        with pytest.raises(RunFolderBusyError), lock_run_folder(folder):
            pass
    assert len(opened) == 1  # (the stale descriptor was closed by the retry)


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    """A holder killed with SIGKILL cannot release anything: the kernel drops the flock."""
    code = (
        "import sys; from layerwise_core import lock_run_folder\n"
        "with lock_run_folder(sys.argv[1]):\n"
        "    print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = pytest.raises(RunFolderBusyError, match=f"pid {holder.pid} ")
        with busy, lock_run_folder(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the .lock file stays behind
        holder.wait()
    assert (tmp_path / ".lock").is_file()
    with lock_run_folder(tmp_path):
        pass


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    keep = ["config.yaml", ".lock", "final", "metrics.jsonl"]
    for name in keep[:2] + keep[3:]:
        (tmp_path / name).write_text("x")
    (tmp_path / "final").mkdir()
    # what atomic_write and atomic directories leave when killed before their rename
    (tmp_path / ".metrics.jsonl.abc123.tmp").write_text("half")
    (tmp_path / ".final.k2j3.tmp").mkdir()
    (tmp_path / ".final.k2j3.tmp" / "model.safetensors").write_bytes(b"half")
    with atomic_write(tmp_path / "config.yaml", "w") as handle:  # a finished write leaves none
        handle.write("y")
    removed = remove_temp_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".final.k2j3.tmp", ".metrics.jsonl.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
