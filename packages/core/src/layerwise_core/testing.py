"""Shared test helpers: per-dtype tolerances (Liger-Kernel's convention), multi-process runs and
the Python blocks of markdown files (so READMEs are executed by tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

__all__ = [
    "NOT_RUN_MARKER",
    "TOLERANCES",
    "assert_close",
    "exit_torchrun_worker",
    "markdown_python_blocks",
    "not_run_reason",
    "run_python",
    "run_torchrun",
    "tolerance",
]

# (atol, rtol) per dtype for comparing two implementations of the same maths
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """`{"atol": ..., "rtol": ...}` for `torch.testing.assert_close` at this dtype."""
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol, "rtol": rtol}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None
) -> None:
    """`torch.testing.assert_close` with the tolerance of `dtype` (default: `expected.dtype`)."""
    torch.testing.assert_close(actual, expected, **tolerance(dtype or expected.dtype))


def run_torchrun(
    script: str | os.PathLike, *args: str, nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone --nproc_per_node N script args...` (gloo on
    CPU) and return the finished process; raise AssertionError with the tail of stderr if it failed.

    `--standalone` picks a free rendezvous port, so parallel test runs do not collide.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(script),
        *map(str, args),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (`python -c code args...`, this environment) and return
    the finished process; raise AssertionError with the tail of stderr if it failed.

    For what a new process sees: nothing imported or registered by the test session (e.g. a model
    type registered with the Auto classes only as a side effect of the test that saved the model).
    The child uses this process's torch thread count (OMP_NUM_THREADS), so that results computed
    here and there can be compared bit for bit (a matmul's reduction order follows the threads).
    """
    command = [sys.executable, "-c", code, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(
            f"python -c <code> {' '.join(map(str, args))} exited with {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )
    return result


_PYTHON_INFO = frozenset({"python", "py", "python3"})


def exit_torchrun_worker() -> None:
    """End a torchrun test worker after its checks: barrier, flush, then `os._exit(0)`.

    gloo's teardown (`destroy_process_group` and the interpreter exit after it) aborts now and then
    on a loaded 2-core machine ("terminate called without an active exception": 3 of 8 runs of
    core's DTensor test under load, 0 of 8 with this exit), after the work is done and checked.
    A failed check raises before this call and still fails the run.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def markdown_python_blocks(path: str | os.PathLike) -> list[tuple[int, str]]:
    """`(line, code)` for each fenced Python block of a markdown file, in file order.

    `line` is the 1-based line number of the opening fence. Fences follow CommonMark: a run of at
    least three backticks or tildes, closed by a run of the same character at least as long with
    nothing after it; the info string's first word must be `python` (or `py`, `python3`). Blocks of
    other languages are skipped, including any ```` ```python ```` lines inside them. An indented
    fence (e.g. inside a list item) counts, and its indentation is removed from the code lines.
    A fence left open raises ValueError naming its line.
    """
    blocks: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    fence = None  # (fence characters, indent, opening line, is python) of the open block
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if fence is None:
            run = len(stripped) - len(stripped.lstrip(stripped[:1])) if stripped else 0
            if run >= 3 and stripped[0] in "`~":
                info = stripped[run:].strip()
                if stripped[0] == "`" and "`" in info:
                    continue  # inline code such as ```x```, not a fence
                language = info.split()[0].lower() if info else ""
                fence, body = (stripped[:run], indent, number, language in _PYTHON_INFO), []
            continue
        chars, open_indent, opened, is_python = fence
        closing = stripped.rstrip()
        if closing.startswith(chars) and not closing.lstrip(chars[0]):
            if is_python:
                blocks.append((opened, "\n".join(body) + "\n" if body else ""))
            fence = None
            continue
        # CommonMark: remove up to the opening fence's indentation from each content line
        body.append(line[min(indent, open_indent) :])
    if fence is not None:
        raise ValueError(f"{path}:{fence[2]}: code fence {fence[0]!r} is never closed - close it")
    return blocks


# `<!-- not-run: REASON -->` on the last non-blank line before a fence: a block that cannot run on
# CPU offline (a GPU, a hub model); the README-block tests skip it and want a CPU twin after it
NOT_RUN_MARKER = re.compile(r"^\s*<!--\s*not-run\b:?(?P<reason>.*?)-->\s*$")


def not_run_reason(lines: list[str], fence_line: int) -> str | None:
    """The reason of the not-run marker of the block whose fence is on 1-based `fence_line` of
    `lines` ("" for a marker without a reason), or None when the block is to be run."""
    for line in reversed(lines[: fence_line - 1]):
        if line.strip():
            match = NOT_RUN_MARKER.match(line)
            return match.group("reason").strip() if match else None
    return None
