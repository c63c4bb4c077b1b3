"""sddmm: Triton (interpreted on CPU, compiled on CUDA), the CPU CSR path and the banded torch
reference vs a plain dense product followed by a gather, and vs a per-entry dot-product loop."""

import pytest
import torch

from layerwise_kernels.sddmm import _triton, sddmm, sddmm_csr, sddmm_naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(m, k_inner, n, n_samples, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k_inner, generator=gen)
    b = torch.randn(k_inner, n, generator=gen)
    flat = torch.randperm(m * n, generator=gen)[:n_samples]
    rows, cols = flat // n, flat % n
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype), rows.to(DEVICE), cols.to(DEVICE)


def _dense_then_gather(a, b, rows, cols):
    return (a.double() @ b.double())[rows, cols]


@pytest.mark.parametrize(("m", "k_inner", "n", "n_samples"), [(5, 7, 3, 9), (37, 130, 29, 300)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_dense_product_fp32(m, k_inner, n, n_samples, backend):
    a, b, rows, cols = _problem(m, k_inner, n, n_samples)
    out = sddmm(a, b, rows, cols, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (n_samples,)
    torch.testing.assert_close(
        out.double(), _dense_then_gather(a, b, rows, cols), rtol=1e-5, atol=1e-5
    )


def test_hand_derived_values():
    # a @ b = [[1*5+2*7, 1*6+2*8], [3*5+4*7, 3*6+4*8]] = [[19, 22], [43, 50]]
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=DEVICE)
    b = torch.tensor([[5.0, 6.0], [7.0, 8.0]], device=DEVICE)
    rows = torch.tensor([1, 0, 1], device=DEVICE)
    cols = torch.tensor([1, 1, 0], device=DEVICE)
    for backend in ("torch", "triton"):
        out = sddmm(a, b, rows, cols, backend=backend)
        torch.testing.assert_close(out, torch.tensor([50.0, 22.0, 43.0], device=DEVICE))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradient_use_with_transposed_view(backend):
    # dW[r, c] = sum_t dy[t, r] x[t, c] at sampled (r, c), with a = dy.T a non-contiguous view.
    gen = torch.Generator().manual_seed(3)
    dy = torch.randn(2, 11, 6, generator=gen).to(DEVICE)
    x = torch.randn(2, 11, 10, generator=gen).to(DEVICE)
    rows = torch.tensor([0, 0, 2, 5, 5, 5], device=DEVICE)
    cols = torch.tensor([1, 9, 3, 0, 4, 9], device=DEVICE)
    dy2, x2 = dy.reshape(-1, 6), x.reshape(-1, 10)
    out = sddmm(dy2.T, x2, rows, cols, backend=backend)
    want = torch.stack([(dy2[:, r] * x2[:, c]).sum() for r, c in zip(rows.tolist(), cols.tolist())])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_reference_bands_and_unsorted_rows():
    # A band of 16 elements holds 2 rows of an 8-column product: 10 rows need 5 bands; rows are
    # given out of order and repeated, so the sort/unsort path runs too.
    a, b, rows, cols = _problem(10, 4, 8, 40, seed=5)
    rows = rows.flip(0)
    cols = cols.flip(0)
    out = sddmm_naive(a, b, rows, cols, max_block_elements=16)
    torch.testing.assert_close(
        out.double(), _dense_then_gather(a, b, rows, cols), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(dtype):
    a, b, rows, cols = _problem(9, 70, 11, 50, seed=2, dtype=dtype)
    want = _dense_then_gather(a, b, rows, cols)  # exact products of the rounded inputs
    for backend in ("torch", "triton"):
        out = sddmm(a, b, rows, cols, backend=backend)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-4)


def test_launch_config_runs_several_programs_and_tiles():
    # The 300-entry case above must loop over several tiles per program and over K in chunks.
    block_s, block_k, programs, _ = _triton._launch_config(300, 130, torch.device(DEVICE))
    assert programs > 1 and -(-300 // block_s) > programs
    assert block_k < 130 or DEVICE == "cuda"


def test_empty_and_errors():
    a, b, rows, cols = _problem(4, 3, 5, 0)
    assert sddmm(a, b, rows, cols).shape == (0,)
    with pytest.raises(ValueError, match=r"a \[M, K\] and b \[K, N\]"):
        sddmm(a, b.T, rows, cols)
    with pytest.raises(TypeError, match="integer"):
        sddmm(a, b, rows.float(), cols.float())
    leaf = a.clone().requires_grad_()
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="torch.no_grad"):
            sddmm(leaf, b, rows, cols, backend="triton")


def test_reference_is_differentiable():
    a, b, rows, cols = _problem(6, 5, 4, 10, seed=7, dtype=torch.float64)
    a.requires_grad_()
    b.requires_grad_()
    torch.autograd.gradcheck(lambda x, y: sddmm_naive(x, y, rows, cols), (a, b))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gradient_sized_problem_bf16():
    # dW entries of a 2048 x 1024 weight from 4096 tokens, as in a sparse-delta backward
    gen = torch.Generator(device="cuda").manual_seed(0)
    dy = torch.randn(4096, 2048, device="cuda", generator=gen).to(torch.bfloat16)
    x = torch.randn(4096, 1024, device="cuda", generator=gen).to(torch.bfloat16)
    flat = torch.randperm(2048 * 1024, device="cuda", generator=gen)[:100_000].sort().values
    rows, cols = flat // 1024, flat % 1024
    got = sddmm(dy.T, x, rows, cols, backend="triton")
    want = sddmm(dy.T, x, rows, cols, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_kernel_compiles_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.sddmm import _triton as k

        for dt in ("fp32", "bf16", "fp16"):
            sig = {"A": f"*{dt}", "B": f"*{dt}", "ROWS": "*i64", "COLS": "*i64", "OUT": "*fp32",
                   "n_samples": "i32", "n_inner": "i32", "stride_am": "i64", "stride_ak": "i64",
                   "stride_bk": "i64", "stride_bn": "i64"}
            compile_sm90(k._sddmm_kernel, sig, {"BLOCK_S": 32, "BLOCK_K": 128}, num_warps=4)
        """
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_csr_path_matches_banded_reference(dtype):
    # The CPU fast path (one dot product per entry through CSR sampled_addmm) against the banded
    # reference, with rows out of order and repeated entries, on a transposed view as in a backward.
    a, b, rows, cols = _problem(23, 40, 17, 120, seed=11, dtype=dtype)
    a, b = a.cpu(), b.cpu()
    rows = torch.cat([rows, rows[:7]]).flip(0).cpu()
    cols = torch.cat([cols, cols[:7]]).flip(0).cpu()
    got = sddmm_csr(a.T.contiguous().T, b, rows, cols)
    want = sddmm_naive(a, b, rows, cols)
    assert got.dtype == want.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(
        got.double(), _dense_then_gather(a, b, rows, cols), rtol=tol, atol=tol * 10
    )


def test_torch_backend_on_cpu_takes_csr_unless_autograd_needs_a_graph():
    a, b, rows, cols = _problem(6, 5, 4, 10, seed=8, dtype=torch.float64)
    a, b, rows, cols = a.cpu(), b.cpu(), rows.cpu(), cols.cpu()
    assert torch.equal(sddmm(a, b, rows, cols, backend="torch"), sddmm_csr(a, b, rows, cols))
    a.requires_grad_()
    out = sddmm(a, b, rows, cols, backend="torch")  # the banded reference, differentiable
    assert out.grad_fn is not None
    torch.autograd.gradcheck(lambda x: sddmm(x, b, rows, cols, backend="torch"), (a,))
