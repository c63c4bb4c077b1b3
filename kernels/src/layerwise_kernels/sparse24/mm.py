"""s @ w with s 2:4-sparse along its columns: torch's semi-structured sparse GEMM on CUDA, dense elsewhere.

The one module that touches torch's semi-structured sparsity (`torch.sparse`, prototype API whose
private ops change between versions). What torch 2.13 accepts (torch/sparse/semi_structured.py):

- the sparse operand is the FIRST operand of `torch.mm`, 2-D, contiguous, CUDA, 2:4 along its rows
  (its last dim = the reduction dim); `to_sparse_semi_structured` does not prune, it compresses;
- shape: rows and cols positive multiples of the backend's (sparse_min_rows, sparse_min_cols):
  CUTLASS fp16/bf16 (32, 64), fp32 (32, 32), int8 (16, 128); cuSPARSELt fp16/bf16 (16, 16), int8
  and float8_e4m3fn (32, 32) (no fp32 on cuSPARSELt in 2.13); the dense operand is padded by torch;
- cuSPARSELt needs both operands of one dtype; sm80+ GPUs (sparse tensor cores).

Here T and F are padded with zero rows / columns (zero rows of w on the F side), which changes
nothing in the product, and the output is sliced back (ELAS spec §3.4). Which backend:
`backend="cutlass"` / `"cusparselt"` use that subclass's `from_dense` (what
`to_sparse_semi_structured` does under `SparseSemiStructuredTensor._FORCE_CUTLASS` True / False,
without flipping that process-wide flag); `"auto"` tries torch's default (the flag's choice) and
then the other; each (device, dtype, backend) is probed once (compress + mm of a 64 x 64 2:4 tensor
compared with the dense product) and cached. Anything else runs the dense `s @ w`.
"""

from __future__ import annotations

import functools

import torch

SPARSE24_MM_BACKENDS = ("auto", "cusparselt", "cutlass", "dense")


def _subclass(backend: str):
    sparse = torch.sparse
    if backend == "cutlass":
        return sparse.SparseSemiStructuredTensorCUTLASS
    return sparse.SparseSemiStructuredTensorCUSPARSELT


def _default_order() -> tuple[str, str]:
    """torch's default backend first (the `_FORCE_CUTLASS` flag's choice), then the other."""
    if torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS:
        return ("cutlass", "cusparselt")
    return ("cusparselt", "cutlass")


def _static_support(device: torch.device, dtype: torch.dtype, backend: str) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip is not None:  # no 2:4 sparse tensor cores in torch's ROCm build
        return False
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        return False
    return dtype in _subclass(backend)._DTYPE_SHAPE_CONSTRAINTS


@functools.cache
def _probe(device: torch.device, dtype: torch.dtype, backend: str) -> bool:
    """Compress a 64 x 64 2:4 tensor and multiply: True when the result equals the dense product."""
    if not _static_support(device, dtype, backend):
        return False
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(64, 64, device=device, generator=gen).to(dtype)
        a = a * torch.tensor([1, 0, 0, 1], device=device, dtype=dtype).repeat(64, 16)
        b = torch.randn(64, 64, device=device, generator=gen).to(dtype)
        sparse = _subclass(backend).from_dense(a)
        got = torch.mm(sparse, b).float()
        want = torch.mm(a.float(), b.float())
        return bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())))
    except Exception:  # any failure (missing kernel, arch, library) means "dense"
        return False


def semi_structured_supported(
    device: torch.device | str, dtype: torch.dtype, backend: str = "auto"
) -> bool:
    """True when `sparse24_mm` would run torch's semi-structured sparse GEMM for (device, dtype).

    Probed once per (device, dtype, backend) and cached. `backend` as `sparse24_mm`.
    """
    return _pick(torch.device(device), dtype, backend) is not None


def _pick(device: torch.device, dtype: torch.dtype, backend: str) -> str | None:
    if backend not in SPARSE24_MM_BACKENDS:
        raise ValueError(
            f"sparse24_mm: backend must be one of {SPARSE24_MM_BACKENDS}, got {backend!r}"
        )
    if backend == "dense":
        return None
    if (
        backend == "auto"
        and dtype == torch.float32
        and torch.get_float32_matmul_precision() == "highest"
    ):
        # CUTLASS's fp32 sparse GEMM runs in TF32: "auto" takes it only where dense fp32 matmuls
        # may use TF32 too (torch.set_float32_matmul_precision("high")), else it stays dense.
        return None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    order = _default_order() if backend == "auto" else (backend,)
    return next((b for b in order if _probe(device, dtype, b)), None)


def _check_24(s: torch.Tensor) -> None:
    groups = s.reshape(s.shape[0], -1, 4)
    worst = int((groups != 0).sum(-1).max()) if groups.numel() else 0
    if worst > 2:
        raise ValueError(
            f"sparse24_mm: s has a group of 4 with {worst} non-zeros along F, so it is not 2:4: "
            "sparsify it first (sparsify_24 / relu2_sparsify_24)"
        )


def sparse24_mm(
    s: torch.Tensor,
    w: torch.Tensor,
    *,
    backend: str = "auto",
    check: bool = False,
) -> torch.Tensor:
    """s @ w for s [T, F] with at most 2 non-zeros in every group of 4 along F; w [F, N].

    The ELAS FFN's down projection h2 = s A_dn (the one 2:4 GEMM, reduction over F).

    Args:
        s: [T, F] 2:4 along F (e.g. `relu2_sparsify_24(y1).values`), F % 4 == 0.
        w: [F, N] dense, s's dtype and device.
        backend: "auto" (torch's semi-structured GEMM where the device, dtype and probe allow,
            else dense; fp32 only under `torch.set_float32_matmul_precision("high")`, as the
            sparse fp32 GEMM is TF32), "cusparselt" / "cutlass" (that backend where it works, else dense), or
            "dense" (`s @ w`). A sparse backend that cannot run falls back to dense, never fails:
            `semi_structured_supported` says what runs.
        check: verify that s is 2:4 (one reduction and a host sync); off by default because the
            selector's output always is. A non-2:4 s on a sparse backend gives a wrong product
            (torch compresses, it does not prune).

    Returns:
        [T, N] in s's dtype. Not differentiable (computed without an autograd graph).
    """
    if s.dim() != 2 or w.dim() != 2 or s.shape[1] != w.shape[0]:
        raise ValueError(
            f"sparse24_mm needs s [T, F] and w [F, N], got {tuple(s.shape)} and {tuple(w.shape)}: "
            "flatten the token dims of s first (s.reshape(-1, F))"
        )
    if s.shape[1] % 4:
        raise ValueError(
            f"sparse24_mm needs F % 4 == 0, got F = {s.shape[1]}: pad F with zero columns of s "
            "and zero rows of w"
        )
    if s.dtype != w.dtype or s.device != w.device:
        raise ValueError(
            f"sparse24_mm needs s and w of one dtype and device, got {s.dtype} on {s.device} and "
            f"{w.dtype} on {w.device}: cast w with .to(s)"
        )
    chosen = _pick(s.device, s.dtype, backend)
    if check:
        _check_24(s)
    with torch.no_grad():
        if chosen is None or s.numel() == 0 or w.shape[1] == 0:
            return s @ w
        sub = _subclass(chosen)
        limits = sub._DTYPE_SHAPE_CONSTRAINTS[s.dtype]
        t, f = s.shape
        pad_t = (-t) % limits.sparse_min_rows
        pad_f = (-f) % limits.sparse_min_cols
        # Zero rows of s add zero rows to the product (sliced off); zero columns of s meet zero
        # rows of w and add nothing. The dense operand's own padding (N) is torch's.
        s_pad = torch.nn.functional.pad(s, (0, pad_f, 0, pad_t)).contiguous()
        w_pad = torch.nn.functional.pad(w, (0, 0, 0, pad_f)) if pad_f else w
        out = torch.mm(sub.from_dense(s_pad), w_pad)
        return out[:t] if pad_t else out
