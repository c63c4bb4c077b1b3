"""grouped_mm: Triton (interpreted on CPU, compiled on CUDA) and torch's grouped GEMM vs the torch
reference vs a row loop; which implementation each backend runs."""

import pytest
import torch

from layerwise_kernels import (
    grouped_mm,
    grouped_mm_naive,
    native_grouped_mm_supports,
    resolve_grouped_mm_backend,
)

# The Triton tests run wherever Triton runs here: compiled on a GPU, else the interpreter on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# fp32: both paths multiply in IEEE fp32 and differ only in summation order.
FP32 = {"rtol": 1e-5, "atol": 1e-5}

# Rows per group: empty groups first, last and in the middle; one group; rows that are not a
# multiple of the interpreter's 16-row tiles; more tiles than programs.
GROUP_COUNTS = [[5, 0, 17, 3], [0, 0, 40], [1], [33, 2, 0, 0, 9], [16, 16, 16, 16, 16, 16, 16]]


def _inputs(counts, n_inner, n_cols, dtype, seed=0, transposed=True):
    gen = torch.Generator().manual_seed(seed)
    rows = sum(counts)
    x = torch.randn(rows, n_inner, generator=gen)
    if transposed:  # an nn.Linear-style [groups, out, in] parameter, seen as [groups, in, out]
        weight = torch.randn(len(counts), n_cols, n_inner, generator=gen).transpose(1, 2)
    else:
        weight = torch.randn(len(counts), n_inner, n_cols, generator=gen)
    dy = torch.randn(rows, n_cols, generator=gen)
    offsets = torch.tensor(counts).cumsum(0)
    return x.to(DEVICE, dtype), weight.to(DEVICE, dtype), offsets.to(DEVICE), dy.to(DEVICE, dtype)


def _forward_backward(x, weight, offsets, dy, backend):
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    y = grouped_mm(x, weight, offsets, backend=backend)
    y.backward(dy)
    return y, x.grad, weight.grad


def _row_loop(x, weight, offsets):
    """out[r] = x[r] @ weight[g(r)], g(r) = number of offsets <= r: one row at a time."""
    ends = offsets.tolist()
    out = []
    for r in range(x.shape[0]):
        group = sum(end <= r for end in ends)
        out.append(x[r] @ weight[group])
    return torch.stack(out) if out else x.new_zeros(0, weight.shape[2])


@pytest.mark.parametrize("counts", GROUP_COUNTS)
def test_reference_equals_row_loop_fp64(counts):
    x, weight, offsets, _ = _inputs(counts, 7, 5, torch.float64, seed=1)
    torch.testing.assert_close(
        grouped_mm_naive(x, weight, offsets), _row_loop(x, weight, offsets), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("counts", GROUP_COUNTS)
@pytest.mark.parametrize(("n_inner", "n_cols"), [(24, 40), (5, 3), (33, 17)])
def test_triton_matches_reference_fp32(counts, n_inner, n_cols):
    x, weight, offsets, dy = _inputs(counts, n_inner, n_cols, torch.float32, seed=2)
    ours = _forward_backward(x, weight, offsets, dy, "triton")
    ref = _forward_backward(x, weight, offsets, dy, "torch")
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, **FP32, msg=lambda m, n=name: f"{n}: {m}")


def test_triton_contiguous_weight_and_strided_x():
    # A [groups, in, out] contiguous weight and an x that is a column slice of a wider tensor.
    x, weight, offsets, dy = _inputs([6, 11, 0, 3], 12, 20, torch.float32, seed=3, transposed=False)
    wide = torch.cat([x, torch.randn_like(x)], dim=1)
    x = wide[:, :12]
    assert not x.is_contiguous()
    ours = _forward_backward(x, weight, offsets, dy, "triton")
    ref = _forward_backward(x, weight, offsets, dy, "torch")
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        torch.testing.assert_close(got, want, **FP32, msg=lambda m, n=name: f"{n}: {m}")


def test_int32_and_int64_offsets_agree():
    x, weight, offsets, _ = _inputs([4, 9, 2], 8, 8, torch.float32, seed=4)
    torch.testing.assert_close(
        grouped_mm(x, weight, offsets.int(), backend="triton"),
        grouped_mm(x, weight, offsets.long(), backend="triton"),
        rtol=0,
        atol=0,
    )


def test_no_rows():
    x, weight, offsets, dy = _inputs([0, 0, 0], 8, 4, torch.float32, seed=5)
    y, dx, dw = _forward_backward(x, weight, offsets, dy, "triton")
    assert y.shape == (0, 4) and dx.shape == (0, 8)
    assert torch.equal(dw, torch.zeros_like(dw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_inputs_accumulate_in_fp32(dtype):
    # The kernel multiplies exact products of half inputs in fp32 and rounds once at the store:
    # compare with the fp32 product of the same (rounded) inputs, rounded once.
    x, weight, offsets, dy = _inputs([9, 0, 14, 4], 40, 24, dtype, seed=6)
    y, dx, dw = _forward_backward(x, weight, offsets, dy, "triton")
    ref = _forward_backward(x.float(), weight.float(), offsets, dy.float(), "torch")
    ulp = torch.finfo(dtype).eps
    for name, got, want in zip(("y", "dx", "dweight"), (y, dx, dw), ref):
        assert got.dtype == dtype, name
        # one rounding to the half dtype, plus fp32 summation-order noise
        torch.testing.assert_close(
            got.float(), want, rtol=ulp, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_auto_runs_the_reference_off_cuda_where_torch_grouped_gemm_refuses():
    # rows of 6 floats (24 bytes): not a multiple of 16 bytes
    x, weight, offsets, _ = _inputs([3, 4], 6, 6, torch.float32, seed=7)
    if DEVICE == "cpu":
        assert resolve_grouped_mm_backend("auto", x, weight) == "torch"
        assert torch.equal(grouped_mm(x, weight, offsets), grouped_mm_naive(x, weight, offsets))


@pytest.mark.parametrize("counts", GROUP_COUNTS)
@pytest.mark.parametrize(("n_inner", "n_cols"), [(16, 8), (24, 40)])
def test_torch_grouped_gemm_matches_reference_fp32_cpu(counts, n_inner, n_cols):
    x, weight, offsets, dy = (t.cpu() for t in _inputs(counts, n_inner, n_cols, torch.float32, 12))
    assert resolve_grouped_mm_backend("auto", x, weight) == "grouped_mm"
    ours = _forward_backward(x, weight, offsets, dy, "grouped_mm")
    ref = _forward_backward(x, weight, offsets, dy, "torch")
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, **FP32, msg=lambda m, n=name: f"{n}: {m}")
    # "auto" takes it: the same numbers bit for bit
    assert torch.equal(grouped_mm(x, weight, offsets), ours[0])


def test_which_backend_runs_on_cpu():
    x, weight, _, _ = (t.cpu() for t in _inputs([3, 4], 16, 8, torch.float32, seed=13))
    up = weight  # [2, 16, 8]: 16 -> 8
    down = torch.randn(2, 16, 8).transpose(1, 2)  # [2, 8, 16]: 8 -> 16
    assert native_grouped_mm_supports(x, up, down)
    assert resolve_grouped_mm_backend("auto", x, up, down) == "grouped_mm"
    assert resolve_grouped_mm_backend("torch", x, up, down) == "torch"
    # fp64 and rows of 6 floats are beyond torch's grouped GEMM: the reference runs
    assert resolve_grouped_mm_backend("auto", x.double(), up.double(), down.double()) == "torch"
    narrow = torch.randn(2, 16, 6)  # one weight of a chain with 24-byte rows: none runs natively
    assert resolve_grouped_mm_backend("auto", x, up, narrow) == "torch"
    sliced = torch.randn(7, 17)[:, :16]  # x whose rows are 17 floats apart
    assert not native_grouped_mm_supports(sliced, up)
    with pytest.raises(ValueError, match="with widths \\[6, 16\\].*pass backend='auto'"):
        resolve_grouped_mm_backend("grouped_mm", x, narrow)
    with pytest.raises(ValueError, match="grouped_mm backend must be one of"):
        resolve_grouped_mm_backend("cuda", x, up)
    with pytest.raises(TypeError, match="got torch.float64: pass backend='torch'"):
        resolve_grouped_mm_backend("triton", x.double(), up.double())


def test_fp64_is_left_to_the_reference():
    x, weight, offsets, _ = _inputs([3, 4], 6, 6, torch.float64, seed=8)
    with pytest.raises(TypeError, match="got torch.float64: pass backend='torch'"):
        grouped_mm(x, weight, offsets, backend="triton")
    assert torch.equal(grouped_mm(x, weight, offsets), grouped_mm_naive(x, weight, offsets))


def test_bad_arguments_name_the_fix():
    x, weight, offsets, _ = _inputs([3, 4], 6, 5, torch.float32, seed=9)
    with pytest.raises(ValueError, match=r"weight.transpose\(1, 2\)"):
        grouped_mm(x, weight.transpose(1, 2), offsets)
    with pytest.raises(TypeError, match="one dtype"):
        grouped_mm(x, weight.double(), offsets)
    with pytest.raises(ValueError, match=r"offsets of shape \[groups\] = \[2\]"):
        grouped_mm(x, weight, offsets[:1])
    with pytest.raises(ValueError, match="ending at the row count 7"):
        grouped_mm(x, weight, torch.tensor([3, 6]).to(DEVICE))
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="non-decreasing"):
            grouped_mm(x, weight, torch.tensor([8, 7]))


def test_kernels_compile_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.grouped_mm import _triton as k

        ints = {"n_groups": "i32", "n_cols": "i32", "n_inner": "i32"}
        for dt in ("fp32", "bf16", "fp16"):
            const = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "UPCAST": False,
                     "INPUT_PRECISION": "ieee" if dt == "fp32" else "tf32"}
            fwd_strides = ("stride_xm", "stride_xk", "stride_wg", "stride_wk", "stride_wn",
                           "stride_ym", "stride_yn")
            dw_strides = ("stride_xm", "stride_xk", "stride_dym", "stride_dyn", "stride_dwg",
                          "stride_dwk", "stride_dwn")
            fwd = {"X": f"*{dt}", "W": f"*{dt}", "Y": f"*{dt}", "OFFSETS": "*i32", **ints,
                   **{s: "i64" for s in fwd_strides}}
            dw = {"X": f"*{dt}", "DY": f"*{dt}", "DW": "*fp32", "OFFSETS": "*i32", **ints,
                  **{s: "i64" for s in dw_strides}}
            for kernel, sig in ((k._grouped_mm_kernel, fwd), (k._grouped_mm_weight_grad_kernel, dw)):
                compile_sm90(kernel, sig, const, num_warps=4)
        """
    )


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="needs a CUDA device of compute capability >= 8.0",
)
def test_torch_grouped_gemm_cuda_bf16_moe_sizes():
    gen = torch.Generator().manual_seed(14)
    counts = torch.bincount(torch.randint(0, 16, (2048,), generator=gen), minlength=16).tolist()
    x, weight, offsets, dy = _inputs(counts, 1024, 704, torch.bfloat16, seed=15)
    assert resolve_grouped_mm_backend("auto", x, weight) == "grouped_mm"
    ours = _forward_backward(x, weight, offsets, dy, "grouped_mm")
    ref = _forward_backward(x.float(), weight.float(), offsets, dy.float(), "torch")
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        size = want.abs().mean().item()
        torch.testing.assert_close(
            got.float() / size,
            want / size,
            rtol=2**-7,
            atol=2e-2,
            msg=lambda m, n=name: f"{n}: {m}",
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda_moe_sizes(dtype):
    # 64 experts, hidden 1024, expert width 704, 8192 token copies with uneven, some empty, groups.
    gen = torch.Generator().manual_seed(10)
    counts = torch.multinomial(torch.rand(64, generator=gen) ** 4, 8192, True, generator=gen)
    counts = torch.bincount(counts, minlength=64).tolist()
    x, weight, offsets, dy = _inputs(counts, 1024, 704, dtype, seed=11)
    ours = _forward_backward(x, weight, offsets, dy, "triton")
    ref = _forward_backward(x.float(), weight.float(), offsets, dy.float(), "torch")
    tol = FP32 if dtype == torch.float32 else {"rtol": 2**-7, "atol": 2e-2}
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        # sums of ~1000 products of unit normals: compare relative to their typical size
        size = want.abs().mean().item()
        torch.testing.assert_close(
            got.float() / size, want / size, **tol, msg=lambda m, n=name: f"{n}: {m}"
        )
