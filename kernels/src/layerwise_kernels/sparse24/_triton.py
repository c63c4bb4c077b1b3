"""Triton 2:4 select, optionally fused with the squared ReLU (ELAS spec §3.2).

Rows are y.reshape(-1, F) with any row stride. One program takes BLOCK_T rows x BLOCK_G groups and
loads the 4 slots of each group as four [BLOCK_T, BLOCK_G] tiles (columns 4g + k), computes

    v_k = relu(x_k)^2 in fp32  (RELU2)   or   v_k = x_k in fp32  (plain select; exact upcast)

and ranks the slots with the 6 pairwise comparisons of a group, branch-free. The rank key is the
integer image of |v|: the fp32 bits with the sign cleared, which orders non-negative floats as the
floats themselves (+0 == -0, +inf above every finite value) and puts NaN (any payload, clamped to
one key) above +inf, the reference's NaN policy. With ties going to the lower slot,

    c_i = #{j < i : key_j >= key_i} + #{j > i : key_j > key_i},   keep_i = c_i < 2,

a strict total order, so exactly two slots are kept. Outputs: the masked dense values (kept values
bitwise unchanged for the plain select; for RELU2 the fp32 v cast once to the output dtype) and a
uint8 mask, or the compact form (the two kept values in slot order, index byte i0 | (i1 << 2)).
Statistics (RELU2): each program writes its partial counts / fp32 masses to its own slot of a
buffer, summed afterwards in program order: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerwise_kernels.sparse24.naive import Relu2Sparse24, Sparse24Stats


@triton.jit
def _key(v):
    # |v| as an int32 that orders like the float; every NaN is one key above +inf (0x7F800000).
    bits = v.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.minimum(bits, 0x7F800001)


@triton.jit
def _select_24_kernel(
    X,
    OUT,
    MASK,
    IDX,
    COUNTS,
    MASS,
    n_rows,
    n_groups,
    stride_x,
    stride_out,
    stride_mask,
    stride_idx,
    RELU2: tl.constexpr,
    COMPACT: tl.constexpr,
    STATS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_g = tl.program_id(1)
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    inside = (rows < n_rows)[:, None] & (groups < n_groups)[None, :]
    cols = 4 * groups.to(tl.int64)[None, :]
    src = X + rows[:, None] * stride_x + cols
    x0 = tl.load(src + 0, mask=inside, other=0.0)
    x1 = tl.load(src + 1, mask=inside, other=0.0)
    x2 = tl.load(src + 2, mask=inside, other=0.0)
    x3 = tl.load(src + 3, mask=inside, other=0.0)
    v0 = x0.to(tl.float32)
    v1 = x1.to(tl.float32)
    v2 = x2.to(tl.float32)
    v3 = x3.to(tl.float32)
    if RELU2:
        # relu keeps NaN (as torch.relu); -0.0 and negatives become +0.
        v0 = tl.where((v0 > 0) | (v0 != v0), v0, 0.0)
        v1 = tl.where((v1 > 0) | (v1 != v1), v1, 0.0)
        v2 = tl.where((v2 > 0) | (v2 != v2), v2, 0.0)
        v3 = tl.where((v3 > 0) | (v3 != v3), v3, 0.0)
        v0 = v0 * v0
        v1 = v1 * v1
        v2 = v2 * v2
        v3 = v3 * v3
    k0 = _key(v0)
    k1 = _key(v1)
    k2 = _key(v2)
    k3 = _key(v3)
    # b_ji: slot j beats slot i (j > i, so j must be strictly larger).
    b10 = (k1 > k0).to(tl.int32)
    b20 = (k2 > k0).to(tl.int32)
    b30 = (k3 > k0).to(tl.int32)
    b21 = (k2 > k1).to(tl.int32)
    b31 = (k3 > k1).to(tl.int32)
    b32 = (k3 > k2).to(tl.int32)
    keep0 = (b10 + b20 + b30) < 2
    keep1 = ((1 - b10) + b21 + b31) < 2
    keep2 = ((1 - b20) + (1 - b21) + b32) < 2
    keep3 = ((1 - b30) + (1 - b31) + (1 - b32)) < 2

    if COMPACT:
        # Exactly two kept: the first is 0, 1 or 2, the second 3, 2 or 1.
        i0 = tl.where(keep0, 0, tl.where(keep1, 1, 2))
        i1 = tl.where(keep3, 3, tl.where(keep2, 2, 1))
        first = tl.where(keep0, v0, tl.where(keep1, v1, v2))
        second = tl.where(keep3, v3, tl.where(keep2, v2, v1))
        dst = OUT + rows[:, None] * stride_out + 2 * groups.to(tl.int64)[None, :]
        tl.store(dst, first.to(OUT.dtype.element_ty), mask=inside)
        tl.store(dst + 1, second.to(OUT.dtype.element_ty), mask=inside)
        byte = (i0 | (i1 << 2)).to(tl.uint8)
        tl.store(IDX + rows[:, None] * stride_idx + groups[None, :], byte, mask=inside)
    else:
        dst = OUT + rows[:, None] * stride_out + cols
        if RELU2:
            tl.store(dst + 0, tl.where(keep0, v0, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 1, tl.where(keep1, v1, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 2, tl.where(keep2, v2, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 3, tl.where(keep3, v3, 0.0).to(OUT.dtype.element_ty), mask=inside)
        else:
            # The loaded values themselves: kept entries bitwise unchanged.
            tl.store(dst + 0, tl.where(keep0, x0, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 1, tl.where(keep1, x1, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 2, tl.where(keep2, x2, 0.0).to(OUT.dtype.element_ty), mask=inside)
            tl.store(dst + 3, tl.where(keep3, x3, 0.0).to(OUT.dtype.element_ty), mask=inside)
        msk = MASK + rows[:, None] * stride_mask + cols
        tl.store(msk + 0, keep0.to(tl.uint8), mask=inside)
        tl.store(msk + 1, keep1.to(tl.uint8), mask=inside)
        tl.store(msk + 2, keep2.to(tl.uint8), mask=inside)
        tl.store(msk + 3, keep3.to(tl.uint8), mask=inside)

    if STATS:
        # Padding lanes loaded 0, so they add nothing to any counter.
        nz0 = (v0 != 0).to(tl.int32)
        nz1 = (v1 != 0).to(tl.int32)
        nz2 = (v2 != 0).to(tl.int32)
        nz3 = (v3 != 0).to(tl.int32)
        s0 = tl.where(keep0, v0, 0.0)
        s1 = tl.where(keep1, v1, 0.0)
        s2 = tl.where(keep2, v2, 0.0)
        s3 = tl.where(keep3, v3, 0.0)
        nz_before = tl.sum(tl.sum(nz0 + nz1 + nz2 + nz3, axis=1), axis=0)
        nz_after = tl.sum(
            tl.sum(
                nz0 * keep0.to(tl.int32)
                + nz1 * keep1.to(tl.int32)
                + nz2 * keep2.to(tl.int32)
                + nz3 * keep3.to(tl.int32),
                axis=1,
            ),
            axis=0,
        )
        mass_before = tl.sum(tl.sum(v0 + v1 + v2 + v3, axis=1), axis=0)
        mass_after = tl.sum(tl.sum(s0 + s1 + s2 + s3, axis=1), axis=0)
        slot = pid_t * tl.num_programs(1) + pid_g
        tl.store(COUNTS + 2 * slot, nz_before)
        tl.store(COUNTS + 2 * slot + 1, nz_after)
        tl.store(MASS + 2 * slot, mass_before)
        tl.store(MASS + 2 * slot + 1, mass_after)


def _launch_config(n_rows: int, n_groups: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_G, num_warps): 4096 elements a program on a GPU, 16 x 16 groups interpreted."""
    if device.type == "cuda":
        block_g = min(128, triton.next_power_of_2(n_groups))
        block_t = max(1, 1024 // block_g)
        return block_t, block_g, 4
    # Interpreter: small tiles so that the tests cover several programs and the edge masks.
    return 16, min(16, triton.next_power_of_2(n_groups)), 4


def select_24_triton(y: torch.Tensor, *, relu2: bool, out: str, stats: bool) -> Relu2Sparse24:
    """Launch the kernel on y [..., F] (F % 4 == 0, last dim the grouped one)."""
    if y.device.type != "cuda" and isinstance(_select_24_kernel, triton.JITFunction):
        raise RuntimeError(
            f"sparse24's Triton kernel was compiled for the GPU but got tensors on {y.device}: "
            "set TRITON_INTERPRET=1 before the first Triton call of the process, or pass "
            "backend='torch'"
        )
    lead, n_cols = y.shape[:-1], y.shape[-1]
    rows = y.reshape(-1, n_cols)
    if n_cols and rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_rows, n_groups = rows.shape[0], n_cols // 4
    compact = out == "compact"
    dev = y.device
    if compact:
        values = torch.empty(n_rows, n_cols // 2, dtype=y.dtype, device=dev)
        indices = torch.empty(n_rows, n_groups, dtype=torch.uint8, device=dev)
        mask = values  # unused by the kernel
    else:
        values = torch.empty(n_rows, n_cols, dtype=y.dtype, device=dev)
        mask = torch.empty(n_rows, n_cols, dtype=torch.uint8, device=dev)
        indices = mask  # unused by the kernel
    block_t, block_g, num_warps = _launch_config(n_rows, n_groups, dev)
    grid = (triton.cdiv(n_rows, block_t), triton.cdiv(n_groups, block_g))
    n_programs = grid[0] * grid[1]
    counts = torch.zeros(2 * max(n_programs, 1) if stats else 1, dtype=torch.int32, device=dev)
    mass = torch.zeros(2 * max(n_programs, 1) if stats else 1, dtype=torch.float32, device=dev)
    if n_programs:
        _select_24_kernel[grid](
            rows, values, mask, indices, counts, mass, n_rows, n_groups,
            rows.stride(0), values.stride(0), mask.stride(0), indices.stride(0),
            RELU2=relu2, COMPACT=compact, STATS=stats,
            BLOCK_T=block_t, BLOCK_G=block_g, num_warps=num_warps,
        )  # fmt: skip
    st = None
    if stats:
        per_program_counts = counts.view(-1, 2).to(torch.int64).sum(0)
        per_program_mass = mass.view(-1, 2).sum(0)
        st = Sparse24Stats(
            count=torch.full((), rows.numel(), dtype=torch.int64, device=dev),
            nonzero_before=per_program_counts[0],
            nonzero_after=per_program_counts[1],
            mass_before=per_program_mass[0],
            mass_after=per_program_mass[1],
        )
    if compact:
        return Relu2Sparse24(
            values.view(*lead, n_cols // 2), None, indices.view(*lead, n_groups), st
        )
    return Relu2Sparse24(
        values.view(*lead, n_cols), mask.view(torch.bool).view(*lead, n_cols), None, st
    )
