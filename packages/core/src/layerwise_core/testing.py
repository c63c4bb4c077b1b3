"""Shared test helpers: per-dtype tolerances (Liger-Kernel's convention) and a seeded input maker."""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "assert_close", "tolerance"]

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
