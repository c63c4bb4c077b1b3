"""Grouped matrix multiply: rows of x sorted by group, one weight matrix per group.

    out[r] = x[r] @ weight[g(r)],   g(r) = the group g with offsets[g - 1] <= r < offsets[g]

The expert computation of a mixture-of-experts layer once its tokens are sorted by expert
(Shazeer et al., "Outrageously Large Neural Networks", ICLR 2017; the grouped GEMM formulation of
Gale et al., "MegaBlocks", MLSys 2023): one call per projection instead of a loop over experts.

Three implementations, chosen by `backend` (`resolve_grouped_mm_backend`):
    "grouped_mm"  torch's own grouped GEMM (`torch.nn.functional.grouped_mm`, before that
                  `torch._grouped_mm`; transformers calls it "grouped_mm" too): CPU fp32/bf16/fp16
                  (torch >= 2.9), CUDA bf16 on SM80+; rows and strides of a multiple of 16 bytes.
    "triton"      the Triton kernels of `_triton.py`: CUDA fp32/bf16/fp16, or CPU tensors under
                  TRITON_INTERPRET=1.
    "torch"       `grouped_mm_naive`: one torch.mm per group (any dtype, fp64 included).
    "auto"        "grouped_mm" where torch's grouped GEMM takes the inputs, else the rule every op
                  of layerwise_kernels follows: Triton for CUDA tensors when triton is installed,
                  else the torch reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.torch_version import TorchVersion

from layerwise_kernels._backend import check_one_device, resolve_backend
from layerwise_kernels.grouped_mm.naive import grouped_mm_naive

__all__ = [
    "GROUPED_MM_BACKENDS",
    "grouped_mm",
    "grouped_mm_naive",
    "native_grouped_mm_supports",
    "resolve_grouped_mm_backend",
]

GROUPED_MM_BACKENDS = ("auto", "grouped_mm", "triton", "torch")

# The kernels compute in fp32 and store in x's dtype: wider inputs would silently lose precision.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NATIVE_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _native_grouped_mm() -> Callable | None:
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def native_grouped_mm_supports(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """True when torch's grouped GEMM accepts `x` [rows, in] times each of `weights` [groups, k, n].

    Pass every operand of a chain of grouped matmuls (e.g. an MoE expert's x, up and down weights)
    to choose one implementation for all of them. torch needs one device and dtype, fp32/bf16/fp16
    on CPU (torch >= 2.9, the first with a CPU kernel) or bf16 on CUDA devices of compute
    capability >= 8.0, and, for every operand, rows (its last two widths for a weight, `in` for x)
    and non-unit strides of a multiple of 16 bytes and a 16-byte aligned start.
    """
    if _native_grouped_mm() is None:
        return False
    if any(w.dtype != x.dtype or w.device != x.device for w in weights):
        return False
    size = x.element_size()
    widths = [x.shape[-1], *(width for w in weights for width in w.shape[-2:])]
    strides = [s for t in (x, *weights) for s in t.stride() if s != 1]
    if any(n * size % 16 for n in (*widths, *strides)):
        return False
    if any(t.data_ptr() % 16 for t in (x, *weights)):
        return False
    if x.device.type == "cpu":
        return x.dtype in _NATIVE_CPU_DTYPES and TorchVersion(torch.__version__) >= "2.9"
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return False


def resolve_grouped_mm_backend(backend: str, x: torch.Tensor, *weights: torch.Tensor) -> str:
    """The implementation `grouped_mm(x, weight, offsets, backend=backend)` runs for these
    operands: "grouped_mm", "triton" or "torch" (see the module docstring); an error naming the
    fix when `backend` cannot run them. Several weights: one choice valid for all of them."""
    if backend not in GROUPED_MM_BACKENDS:
        raise ValueError(
            f"grouped_mm backend must be one of {GROUPED_MM_BACKENDS}, got {backend!r}"
        )
    check_one_device(x, *weights)
    if backend in ("auto", "grouped_mm") and native_grouped_mm_supports(x, *weights):
        return "grouped_mm"
    if backend == "grouped_mm":
        widths = sorted({x.shape[-1], *(n for w in weights for n in w.shape[-2:])})
        raise ValueError(
            f"backend 'grouped_mm' (torch's grouped GEMM) does not take {x.dtype} on {x.device} "
            f"with widths {widths}: it needs fp32/bf16/fp16 on CPU (torch >= 2.9) or bf16 on CUDA "
            "SM80+, and rows and strides of a multiple of 16 bytes; pass backend='auto'"
        )
    chosen = resolve_backend(backend, x, *weights)
    if chosen == "triton" and x.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"grouped_mm's Triton kernel takes x in {_TRITON_DTYPES}, got {x.dtype}: "
                "pass backend='torch' or backend='auto'"
            )
        chosen = "torch"
    return chosen


def _check(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[1] or weight.shape[0] == 0:
        raise ValueError(
            "grouped_mm needs x of shape [rows, in] and weight of shape [groups, in, out], got "
            f"x {tuple(x.shape)} and weight {tuple(weight.shape)} (groups >= 1): pass a "
            "[groups, out, in] (nn.Linear-style) weight as weight.transpose(1, 2)"
        )
    if x.dtype != weight.dtype:
        raise TypeError(
            f"grouped_mm needs x and weight of one dtype, got {x.dtype} and {weight.dtype}: "
            "cast one of them with .to()"
        )
    if offsets.dim() != 1 or offsets.shape[0] != weight.shape[0] or offsets.is_floating_point():
        raise ValueError(
            f"grouped_mm needs integer offsets of shape [groups] = [{weight.shape[0]}] (the "
            f"cumulative row counts, e.g. counts.cumsum(0)), got {offsets.dtype} of shape "
            f"{tuple(offsets.shape)}"
        )
    if offsets.device.type != "cuda" and offsets.numel() > 0:
        # Checking values costs a host sync on a GPU; on CPU it is free.
        ends = offsets.to(torch.int64)
        if int(ends[-1]) != x.shape[0] or bool((ends.diff() < 0).any()) or int(ends[0]) < 0:
            raise ValueError(
                f"grouped_mm needs non-decreasing offsets ending at the row count {x.shape[0]}, "
                f"got {offsets.tolist()}: build them as counts.cumsum(0) over rows sorted by group"
            )


def grouped_mm(
    x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Multiply each contiguous group of rows of x by its own matrix.

        out[s_g : e_g] = x[s_g : e_g] @ weight[g],   e_g = offsets[g],  s_g = e_{g-1},  s_0 = 0

    The expert step of a sort-based mixture-of-experts dispatch (rows = token copies sorted by
    expert, groups = experts). Empty groups are allowed; their weight gradient is zero.

    Args:
        x: [rows, in], rows sorted by group; fp32/bf16/fp16 (fp64 on the torch backend only).
        weight: [groups, in, out] of x's dtype; any strides (an nn.Linear-style [groups, out, in]
            parameter goes in as `weight.transpose(1, 2)` without a copy).
        offsets: [groups] integer cumulative row counts; offsets[-1] must equal rows. Values are
            checked on CPU only (on a GPU the check would cost a host sync).
        backend: "auto" (torch's grouped GEMM where it takes the inputs, else Triton for CUDA
            tensors when triton is installed, else torch), "grouped_mm" (torch's grouped GEMM),
            "torch" (the loop reference in `naive.py`), or "triton" (CUDA tensors, or CPU tensors
            under TRITON_INTERPRET=1); `resolve_grouped_mm_backend` tells which one runs.

    Returns:
        [rows, out] in x's dtype; differentiable with respect to x and weight. The Triton kernel
        accumulates in fp32 (IEEE fp32 products for fp32 inputs, no TF32).
    """
    _check(x, weight, offsets)
    check_one_device(x, weight, offsets)
    chosen = resolve_grouped_mm_backend(backend, x, weight)
    if chosen == "grouped_mm":
        return _native_grouped_mm()(x, weight, offs=offsets.to(torch.int32))
    if chosen == "torch":
        return grouped_mm_naive(x, weight, offsets)
    from layerwise_kernels.grouped_mm._triton import GroupedMMFunction

    return GroupedMMFunction.apply(x, weight, offsets)
