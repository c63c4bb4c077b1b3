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
        pass


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
        holder.kill()
        holder.wait()
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
