"""Triton multi-tensor kernels of the SPAM / Stable-SPAM optimizer steps.

One launch updates every tensor of a list, whatever their sizes: each tensor is cut into blocks of
BLOCK elements, a block table maps block b to (tensor t, first element), and the kernels read the
addresses of tensor t from a table of data pointers (int64, cast to typed pointers in the kernel).
Programs walk the block table with a stride of the number of programs, so the grid stays small: on a
GPU a few waves of programs, under the interpreter a handful (each program costs milliseconds there).

Elementwise maths runs in fp32 (fp64 for fp64 tensors); values are stored back in their own dtype.
The reductions (max|g|, sum of squares) write one partial per block; torch then reduces the partials
of each tensor through a padded index, in a fixed order, so the result is deterministic.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from layerwise_kernels.spam_step.naive import as_vector, compute_dtype

TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}

_RESET = {"none": 0, "before": 1, "after": 2}


@triton.jit
def _typed(ADDRS, row, n_tensors, t, DTYPE: tl.constexpr):
    return tl.load(ADDRS + row * n_tensors + t).to(tl.pointer_type(DTYPE), bitcast=True)


@triton.jit
def _spam_step_kernel(
    ADDRS,
    NUMELS,
    STEPS,
    SCALARS,
    BLOCK_TENSOR,
    BLOCK_START,
    n_tensors,
    n_blocks,
    P_TYPE: tl.constexpr,
    G_TYPE: tl.constexpr,
    M_TYPE: tl.constexpr,
    V_TYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    CLIP: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # 1 - beta comes from the host in fp64: computed in fp32 from a rounded beta2 = 0.999 it would be
    # 1.3e-5 off in relative terms.
    beta1 = tl.load(SCALARS + 0)
    one_minus_beta1 = tl.load(SCALARS + 1)
    beta2 = tl.load(SCALARS + 2)
    one_minus_beta2 = tl.load(SCALARS + 3)
    eps = tl.load(SCALARS + 4)
    theta = tl.load(SCALARS + 5)
    decay = tl.load(SCALARS + 6)
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t = tl.load(BLOCK_TENSOR + b)
        offs = tl.load(BLOCK_START + b) + tl.arange(0, BLOCK)
        mask = offs < tl.load(NUMELS + t)
        p_ptr = _typed(ADDRS, 0, n_tensors, t, P_TYPE) + offs
        g_ptr = _typed(ADDRS, 1, n_tensors, t, G_TYPE) + offs
        m_ptr = _typed(ADDRS, 2, n_tensors, t, M_TYPE) + offs
        v_ptr = _typed(ADDRS, 3, n_tensors, t, V_TYPE) + offs
        p = tl.load(p_ptr, mask=mask, other=0.0).to(COMPUTE)
        g = tl.load(g_ptr, mask=mask, other=0.0).to(COMPUTE)
        m = tl.load(m_ptr, mask=mask, other=0.0).to(COMPUTE)
        v = tl.load(v_ptr, mask=mask, other=0.0).to(COMPUTE)
        if CLIP:
            # spike: g^2 > theta v  ->  sign(g) sqrt(theta v)   (v: the previous second moment)
            bound = tl.sqrt(theta * v)
            g = tl.where(g * g > theta * v, tl.where(g < 0, -bound, bound), g)
            if WRITE_GRAD:
                tl.store(g_ptr, g.to(G_TYPE), mask=mask)
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * g * g
        p = (p - tl.load(STEPS + t) * m / (tl.sqrt(v) + eps)) * decay
        tl.store(p_ptr, p.to(P_TYPE), mask=mask)
        tl.store(m_ptr, m.to(M_TYPE), mask=mask)
        tl.store(v_ptr, v.to(V_TYPE), mask=mask)


@triton.jit
def _stable_spam_step_kernel(
    ADDRS,
    NUMELS,
    VECTORS,
    SCALARS,
    BLOCK_TENSOR,
    BLOCK_START,
    n_tensors,
    n_blocks,
    P_TYPE: tl.constexpr,
    G_TYPE: tl.constexpr,
    M_TYPE: tl.constexpr,
    V_TYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    RESET: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    beta1 = tl.load(SCALARS + 0)
    one_minus_beta1 = tl.load(SCALARS + 1)
    beta2 = tl.load(SCALARS + 2)
    one_minus_beta2 = tl.load(SCALARS + 3)
    decay = tl.load(SCALARS + 4)
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t = tl.load(BLOCK_TENSOR + b)
        offs = tl.load(BLOCK_START + b) + tl.arange(0, BLOCK)
        mask = offs < tl.load(NUMELS + t)
        clip_at = tl.load(VECTORS + t)
        ratio = tl.load(VECTORS + n_tensors + t)
        gn_scale = tl.load(VECTORS + 2 * n_tensors + t)
        step = tl.load(VECTORS + 3 * n_tensors + t)
        eps = tl.load(VECTORS + 4 * n_tensors + t)
        p_ptr = _typed(ADDRS, 0, n_tensors, t, P_TYPE) + offs
        g_ptr = _typed(ADDRS, 1, n_tensors, t, G_TYPE) + offs
        m_ptr = _typed(ADDRS, 2, n_tensors, t, M_TYPE) + offs
        v_ptr = _typed(ADDRS, 3, n_tensors, t, V_TYPE) + offs
        p = tl.load(p_ptr, mask=mask, other=0.0).to(COMPUTE) * decay
        g = tl.load(g_ptr, mask=mask, other=0.0).to(COMPUTE)
        g = tl.where(tl.abs(g) > clip_at, g * ratio, g)  # AdaClip
        if WRITE_GRAD:
            tl.store(g_ptr, g.to(G_TYPE), mask=mask)
        g = g * gn_scale  # AdaGN
        if RESET == 1:
            m = tl.zeros([BLOCK], dtype=COMPUTE)
            v = tl.zeros([BLOCK], dtype=COMPUTE)
        else:
            m = tl.load(m_ptr, mask=mask, other=0.0).to(COMPUTE)
            v = tl.load(v_ptr, mask=mask, other=0.0).to(COMPUTE)
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * g * g
        p = p - step * m / (tl.sqrt(v) + eps)
        if RESET == 2:
            m = tl.zeros([BLOCK], dtype=COMPUTE)
            v = tl.zeros([BLOCK], dtype=COMPUTE)
        tl.store(p_ptr, p.to(P_TYPE), mask=mask)
        tl.store(m_ptr, m.to(M_TYPE), mask=mask)
        tl.store(v_ptr, v.to(V_TYPE), mask=mask)


@triton.jit
def _partials_kernel(
    ADDRS,
    NUMELS,
    VECTORS,
    BLOCK_TENSOR,
    BLOCK_START,
    PARTIAL,
    n_tensors,
    n_blocks,
    X_TYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    CLIPPED_SQ_NORM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Per block: max |x|, or the sum of squares of x clipped as AdaClip does.
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t = tl.load(BLOCK_TENSOR + b)
        offs = tl.load(BLOCK_START + b) + tl.arange(0, BLOCK)
        mask = offs < tl.load(NUMELS + t)
        x = tl.load(_typed(ADDRS, 0, n_tensors, t, X_TYPE) + offs, mask=mask, other=0.0)
        x = x.to(COMPUTE)
        if CLIPPED_SQ_NORM:
            clip_at = tl.load(VECTORS + t)
            x = tl.where(tl.abs(x) > clip_at, x * tl.load(VECTORS + n_tensors + t), x)
            tl.store(PARTIAL + b, tl.sum(x * x, axis=0))
        else:
            tl.store(PARTIAL + b, tl.max(tl.abs(x), axis=0))


def _launch_config(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK, max programs, num_warps)."""
    if device.type == "cuda":
        return 2048, torch.cuda.get_device_properties(device).multi_processor_count * 8, 8
    # Interpreter: a program costs milliseconds, a wide block almost nothing (numpy).
    return 1024, 4, 4


@functools.lru_cache(maxsize=64)
def _plan(numels: tuple[int, ...], block: int, device: torch.device):
    """Block table of a list of tensors: (numels, block -> tensor, block -> first element,
    [tensors, max blocks] index of each tensor's blocks padded with n_blocks, n_blocks)."""
    counts = torch.tensor([triton.cdiv(n, block) for n in numels], dtype=torch.int64)
    n_blocks = int(counts.sum())
    first = torch.cumsum(counts, 0) - counts
    block_tensor = torch.repeat_interleave(torch.arange(len(numels)), counts)
    block_start = (torch.arange(n_blocks) - first[block_tensor]) * block
    cols = torch.arange(max(1, int(counts.max())))
    padded = torch.where(cols < counts[:, None], first[:, None] + cols, n_blocks)
    return (
        torch.tensor(numels, dtype=torch.int64, device=device),
        block_tensor.to(device=device, dtype=torch.int32),
        block_start.to(device),
        padded.to(device),
        n_blocks,
    )


def _check_runnable(t: torch.Tensor) -> None:
    # Kernels decorated while TRITON_INTERPRET was unset are GPU kernels; on CPU tensors Triton would
    # only say "0 active drivers".
    if t.device.type != "cuda" and isinstance(_spam_step_kernel, triton.JITFunction):
        raise RuntimeError(
            f"the SPAM step's Triton kernels were compiled for the GPU but got tensors on {t.device}: "
            "set TRITON_INTERPRET=1 before the first Triton call of the process, or pass "
            "backend='torch'"
        )


def _addresses(lists: Sequence[Sequence[torch.Tensor]], device: torch.device) -> torch.Tensor:
    rows = [[t.data_ptr() for t in ts] for ts in lists]
    return torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)


def _launch(kernel, lists, extra_args, constexprs, like: torch.Tensor) -> None:
    _check_runnable(like)
    block, max_programs, num_warps = _launch_config(like.device)
    numels, block_tensor, block_start, _, n_blocks = _plan(
        tuple(t.numel() for t in lists[0]), block, like.device
    )
    if n_blocks == 0:
        return
    programs = max(1, min(max_programs, n_blocks))
    kernel[(programs,)](
        _addresses(lists, like.device), numels, *extra_args, block_tensor, block_start,
        len(lists[0]), n_blocks, **constexprs, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip


def _types(lists) -> dict[str, object]:
    names = ("P_TYPE", "G_TYPE", "M_TYPE", "V_TYPE")
    return {name: TL_DTYPES[ts[0].dtype] for name, ts in zip(names, lists)}


def spam_step(params, grads, exp_avgs, exp_avg_sqs, step_sizes, *, beta1, beta2, eps,
              clip_threshold, decay, write_clipped_grad) -> None:  # fmt: skip
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    like = params[0]
    dtype = compute_dtype(like.dtype)
    scalars = [beta1, 1 - beta1, beta2, 1 - beta2, eps, clip_threshold, decay]
    scalars = torch.tensor(scalars, dtype=dtype).to(like.device)
    _launch(
        _spam_step_kernel,
        lists,
        (as_vector(step_sizes, len(params), like), scalars),
        dict(
            **_types(lists),
            COMPUTE=TL_DTYPES[dtype],
            CLIP=clip_threshold > 0,
            WRITE_GRAD=bool(write_clipped_grad) and clip_threshold > 0,
        ),
        like,
    )


def stable_spam_step(params, grads, exp_avgs, exp_avg_sqs, clip_thresholds, clip_ratios,
                     grad_scales, step_sizes, epss, *, beta1, beta2, decay, reset_moments,
                     write_clipped_grad) -> None:  # fmt: skip
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    like, n = params[0], len(params)
    dtype = compute_dtype(like.dtype)
    vectors = torch.stack(
        [
            as_vector(x, n, like)
            for x in (clip_thresholds, clip_ratios, grad_scales, step_sizes, epss)
        ]
    )
    scalars = torch.tensor([beta1, 1 - beta1, beta2, 1 - beta2, decay], dtype=dtype).to(like.device)
    _launch(
        _stable_spam_step_kernel,
        lists,
        (vectors, scalars),
        dict(
            **_types(lists),
            COMPUTE=TL_DTYPES[dtype],
            RESET=_RESET[reset_moments],
            WRITE_GRAD=bool(write_clipped_grad),
        ),
        like,
    )


def _per_tensor(tensors, vectors, clipped_sq_norm: bool) -> torch.Tensor:
    like = tensors[0]
    _check_runnable(like)
    dtype = compute_dtype(like.dtype)
    block, max_programs, num_warps = _launch_config(like.device)
    numels, block_tensor, block_start, padded, n_blocks = _plan(
        tuple(t.numel() for t in tensors), block, like.device
    )
    partial = torch.zeros(n_blocks + 1, dtype=dtype, device=like.device)  # last: the padding
    if n_blocks:
        _partials_kernel[(max(1, min(max_programs, n_blocks)),)](
            _addresses([tensors], like.device), numels, vectors, block_tensor, block_start,
            partial, len(tensors), n_blocks, X_TYPE=TL_DTYPES[like.dtype],
            COMPUTE=TL_DTYPES[dtype], CLIPPED_SQ_NORM=clipped_sq_norm, BLOCK=block,
            num_warps=num_warps,
        )  # fmt: skip
    blocks = partial[padded]
    return blocks.sum(1) if clipped_sq_norm else blocks.amax(1)


def per_tensor_abs_max(tensors) -> torch.Tensor:
    like = tensors[0]
    return _per_tensor(tensors, like.new_zeros(1, dtype=compute_dtype(like.dtype)), False)


def per_tensor_clipped_sq_norm(tensors, clip_thresholds, clip_ratios) -> torch.Tensor:
    like, n = tensors[0], len(tensors)
    vectors = torch.cat([as_vector(clip_thresholds, n, like), as_vector(clip_ratios, n, like)])
    return _per_tensor(tensors, vectors, True)
