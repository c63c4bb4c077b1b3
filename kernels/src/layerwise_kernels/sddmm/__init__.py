"""Sampled dense-dense matmul (SDDMM): only the selected entries of a matrix product.

    out[i] = (a @ b)[rows[i], cols[i]] = sum_j a[rows[i], j] * b[j, cols[i]]

Its use in layerwise: the gradient of a sparse weight delta (LIFT, SEFT, SpIEL) at its k selected
entries, dW[r, c] = sum_t dy[t, r] * x[t, c], i.e. `sddmm(dy.T, x, rows, cols)`, without forming the
dense [out_features, in_features] gradient. Nikolic et al. call the op SDDMM ("Sampled Dense-Dense
Matrix Multiplication"); Ansell et al., "Scaling Sparse Fine-Tuning to Large Language Models"
(SpIEL, arXiv 2401.16405) compute sparse-delta gradients the same way.
"""

from __future__ import annotations

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.sddmm.csr import sddmm_csr
from layerwise_kernels.sddmm.naive import sddmm_naive

__all__ = ["sddmm", "sddmm_csr", "sddmm_naive"]

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def sddmm(
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Entries (rows[i], cols[i]) of the product a @ b, accumulated in fp32.

        out[i] = sum_j a[rows[i], j] * b[j, cols[i]]

    Memory is O(k) plus a bounded transient. On CPU the torch backend computes one dot product per
    entry through a CSR `torch.sparse.sampled_addmm` (`csr.py`: k * K multiply-adds); a call that
    must build an autograd graph, and any other device, takes the banded reference (`naive.py`: one
    band of rows of the dense product at a time, at most 2**22 fp32 values); the Triton kernel
    gathers rows of a and columns of b per tile.

    Args:
        a: [M, K] matrix, fp32/bf16/fp16, any strides (e.g. `dy.T` of a [T, M] output gradient).
        b: [K, N] matrix of the same dtype family, any strides.
        rows: [k] integer row indices into the product, 0 <= rows < M (any order).
        cols: [k] integer column indices, 0 <= cols < N.
        backend: "auto" (Triton on CUDA when triton is installed, else torch), "torch" (CSR
            `sampled_addmm` on CPU, the banded reference in `naive.py` otherwise or when autograd
            needs a graph), or "triton" (CUDA tensors, or CPU tensors under
            TRITON_INTERPRET=1).

    Returns:
        fp32 tensor [k] (fp64 for fp64 inputs on the torch path). The Triton path is not differentiable (the op exists to compute gradients);
        the torch reference is, through autograd.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"sddmm needs a [M, K] and b [K, N], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if rows.dim() != 1 or cols.shape != rows.shape:
        raise ValueError(
            f"sddmm needs 1-D rows and cols of one length, got {tuple(rows.shape)} and "
            f"{tuple(cols.shape)}"
        )
    if rows.dtype.is_floating_point or cols.dtype.is_floating_point:
        raise TypeError(
            f"sddmm's rows/cols must be integer tensors, got {rows.dtype}, {cols.dtype}"
        )
    chosen = resolve_backend(backend, a, b, rows, cols)
    if chosen == "triton" and (a.dtype not in _TRITON_DTYPES or b.dtype not in _TRITON_DTYPES):
        if backend == "triton":
            raise TypeError(
                f"sddmm's Triton kernel takes fp32/bf16/fp16 inputs, got {a.dtype} and {b.dtype}: "
                "pass backend='torch'"
            )
        chosen = "torch"
    if chosen == "torch":
        differentiable = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        if a.device.type == "cpu" and not differentiable:
            return sddmm_csr(a, b, rows, cols)
        return sddmm_naive(a, b, rows, cols)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        raise RuntimeError(
            "sddmm's Triton path does not build an autograd graph: call it under torch.no_grad() "
            "(as inside a backward), or pass backend='torch' to differentiate through it"
        )
    from layerwise_kernels.sddmm._triton import sddmm_triton

    return sddmm_triton(a, b, rows, cols)
