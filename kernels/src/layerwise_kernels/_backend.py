"""Which implementation of an op runs: the dispatch rule shared by every op of layerwise_kernels.

    backend="torch"   the pure-torch reference, on any device.
    backend="triton"  the Triton kernel: CUDA tensors, or CPU tensors under the Triton interpreter
                      (TRITON_INTERPRET=1 set before the first Triton call of the process).
    backend="auto"    Triton for CUDA tensors when triton is importable, else the reference.

Triton is imported here only when a CUDA tensor asks for it, so `import layerwise_kernels` works
without triton installed.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("auto", "torch", "triton")

INSTALL_HINT = "pip install 'layerwise-kernels[triton]'"


@functools.cache
def triton_available() -> bool:
    """True when `import triton` succeeds (it is an optional extra: layerwise-kernels[triton])."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through the Triton interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_one_device(*tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the fix unless all `tensors` are on one device."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(
            f"all tensors of one op must be on one device, got {names}: move them with .to()"
        )


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return "torch" or "triton" for an op on `tensors`; raise an error naming the fix otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_one_device(*tensors)
    if backend == "torch":
        return "torch"
    on_cuda = bool(tensors) and tensors[0].is_cuda
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise ImportError(f"backend='triton' needs triton: {INSTALL_HINT}, or pass backend='torch'")
    if on_cuda:
        return "triton"
    device = tensors[0].device if tensors else "no tensors"
    if tensors and tensors[0].device.type == "cpu" and interpreter_enabled():
        return "triton"
    raise RuntimeError(
        f"backend='triton' got tensors on {device}: Triton kernels run on CUDA tensors, or on CPU "
        "tensors only under the Triton interpreter - set TRITON_INTERPRET=1 in the environment "
        "before the first Triton call of the process, move the tensors to a CUDA device, or pass "
        "backend='torch' (backend='auto' picks the torch reference off CUDA)"
    )
