"""Shared test helpers: per-dtype tolerances (Liger-Kernel's convention) and multi-process runs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

__all__ = ["TOLERANCES", "assert_close", "run_torchrun", "tolerance"]

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
