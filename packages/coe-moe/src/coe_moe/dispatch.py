"""Sort-based token dispatch to routed SwiGLU experts: one grouped matmul per projection.

    y_n = sum_{k < K} w_{n,k} E_{e_{n,k}}(x_n),   E_i(x) = W^down_i (act(W^gate_i x) * (W^up_i x))

The N*K (token, expert) pairs are sorted by expert (a stable argsort), the token copies gathered in
that order, and each projection of all experts runs as one grouped matmul over the sorted rows
(groups = experts, `offsets` = cumulative counts). The outputs go back to pair order, are weighted
and summed over each token's K pairs (a reshape and a sum: deterministic, unlike index_add on a
GPU). No token is dropped (no capacity factor) and there is no Python loop over experts except in
the "torch" reference backend.

Backends of the grouped matmul (all give the same result up to summation order):
    "grouped_mm"  torch's grouped GEMM (`torch.nn.functional.grouped_mm` / `torch._grouped_mm`):
                  CPU fp32/bf16/fp16, CUDA bf16 on SM80+; rows must be 16-byte aligned.
    "triton"      `layerwise_kernels.grouped_mm(backend="triton")`: CUDA fp32/bf16/fp16, or CPU
                  under TRITON_INTERPRET=1.
    "torch"       `layerwise_kernels.grouped_mm(backend="torch")`: one torch.mm per expert on its
                  slice of the sorted rows (any dtype, fp64 included).
    "auto"        "grouped_mm" where torch supports the inputs, else "triton" on CUDA when Triton
                  is installed, else "torch".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.torch_version import TorchVersion

from coe_moe.configuration_coe import EXPERT_BACKENDS
from layerwise_kernels import triton_available
from layerwise_kernels.grouped_mm import grouped_mm

__all__ = ["experts_forward", "native_grouped_mm_supports", "resolve_expert_backend"]

_NATIVE_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _native_grouped_mm() -> Callable | None:
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def native_grouped_mm_supports(
    x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor
) -> bool:
    """True when torch's grouped GEMM accepts the expert matmuls of these tensors.

    torch needs every row of both operands 16-byte aligned (hidden and expert widths multiples of
    16 bytes, weights at 16-byte aligned addresses), fp32/bf16/fp16 on CPU (torch >= 2.9, the
    first with a CPU kernel) and bf16 on CUDA devices of compute capability >= 8.0.
    """
    if _native_grouped_mm() is None or x.dtype != gate_up_proj.dtype:
        return False
    hidden, intermediate = down_proj.shape[1], down_proj.shape[2]
    row_bytes = (hidden * x.element_size(), intermediate * x.element_size())
    addresses = (gate_up_proj.data_ptr(), down_proj.data_ptr())
    if any(b % 16 for b in row_bytes) or any(a % 16 for a in addresses):
        return False
    if x.device.type == "cpu":
        return x.dtype in _NATIVE_CPU_DTYPES and TorchVersion(torch.__version__) >= "2.9"
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return False


def resolve_expert_backend(
    backend: str, x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor
) -> str:
    """The backend that runs: `backend` itself, or for "auto" the first that supports the inputs."""
    if backend not in EXPERT_BACKENDS:
        raise ValueError(f"expert backend must be one of {EXPERT_BACKENDS}, got {backend!r}")
    if backend == "grouped_mm" and not native_grouped_mm_supports(x, gate_up_proj, down_proj):
        raise ValueError(
            f"expert backend 'grouped_mm' does not support {x.dtype} on {x.device} with hidden "
            f"{down_proj.shape[1]} and expert width {down_proj.shape[2]} (torch's grouped GEMM "
            "needs fp32/bf16/fp16 on CPU, bf16 on CUDA SM80+, rows of a multiple of 16 bytes): "
            "use expert_backend='auto'"
        )
    if backend != "auto":
        return backend
    if native_grouped_mm_supports(x, gate_up_proj, down_proj):
        return "grouped_mm"
    if x.is_cuda and triton_available() and x.dtype != torch.float64:
        return "triton"
    return "torch"


def _grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, backend: str
) -> torch.Tensor:
    """x [rows, in] sorted by expert, weight [experts, out, in] (nn.Linear layout) -> [rows, out]."""
    weight_t = weight.transpose(1, 2)  # [experts, in, out] without a copy
    if backend == "grouped_mm":
        return _native_grouped_mm()(x, weight_t, offs=offsets.to(torch.int32))
    return grouped_mm(x, weight_t, offsets, backend=backend)


def experts_forward(
    x: torch.Tensor,
    weights: torch.Tensor,
    experts: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted sum of each token's K routed SwiGLU experts, by sorting tokens by expert.

        y_n = sum_k weights[n, k] * W^down_e (act(W^gate_e x_n) * (W^up_e x_n)),  e = experts[n, k]

    Args:
        x: [tokens, hidden].
        weights: [tokens, K] routing weights (any float dtype; the weighted sum runs in the wider
            of it and x's dtype, then is cast to x's dtype).
        experts: [tokens, K] int64 expert indices.
        gate_up_proj: [E, 2 * I, hidden], gate rows first then up rows (transformers' fused MoE
            layout).
        down_proj: [E, hidden, I].
        act_fn: activation of the gate (SiLU for SwiGLU).
        backend: see the module docstring.

    Returns:
        [tokens, hidden] in x's dtype.
    """
    tokens, top_k = experts.shape
    num_experts = gate_up_proj.shape[0]
    chosen = resolve_expert_backend(backend, x, gate_up_proj, down_proj)
    flat = experts.reshape(-1)  # pair p = n * K + k
    order = torch.argsort(flat, stable=True)  # pairs sorted by expert
    offsets = torch.bincount(flat, minlength=num_experts).cumsum(0)
    rows = x.index_select(0, order // top_k)  # token copies sorted by expert
    gate, up = _grouped_linear(rows, gate_up_proj, offsets, chosen).chunk(2, dim=-1)
    out_sorted = _grouped_linear(act_fn(gate) * up, down_proj, offsets, chosen)
    out_pairs = torch.empty_like(out_sorted).index_copy(0, order, out_sorted)  # pair order
    acc_dtype = torch.promote_types(x.dtype, weights.dtype)
    mixed = out_pairs.view(tokens, top_k, -1).to(acc_dtype) * weights.to(acc_dtype).unsqueeze(-1)
    return mixed.sum(dim=1).to(x.dtype)
