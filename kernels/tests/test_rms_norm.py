"""rms_norm: Triton (interpreted on CPU, compiled on CUDA) vs the torch reference vs HF modules."""

import math

import pytest
import torch
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from layerwise_kernels import rms_norm, rms_norm_naive
from layerwise_kernels.rms_norm import _triton

# The Triton tests run wherever Triton runs here: compiled on a GPU, else the interpreter on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# fp32: both paths compute in fp32 and differ only in summation order. bf16/fp16: two ulps of the
# output dtype, because the reference's autograd rounds to it between ops where Triton does not.
TOLERANCES = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2**-6, "atol": 2**-6},
    torch.float16: {"rtol": 2**-9, "atol": 2**-9},
}

# eps=0 makes 1/rms infinite in the masked (padding) rows of a tile; they are never stored.
EPS0_PADDING = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")

# (scale, offset): plain RMSNorm, LayerNorm Scaling of layer 3, Gemma's (1 + w) scaled as well.
VARIANTS = [(1.0, 0.0), (1 / math.sqrt(3), 0.0), (0.5, 1.0)]


def _inputs(shape, dtype, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    # A weight away from 1 (and around 0 for offset=1) so that errors in it show.
    weight = 1.0 - offset + 0.3 * torch.randn(shape[-1], generator=gen)
    dy = torch.randn(shape, generator=gen)
    return (t.to(DEVICE, dtype) for t in (x, weight, dy))


def _forward_backward(x, weight, dy, backend, **kwargs):
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    y = rms_norm(x, weight, backend=backend, **kwargs)
    y.backward(dy)
    return y, x.grad, weight.grad


@pytest.mark.parametrize("shape", [(5, 123), (2, 3, 64), (67, 1000), (70, 33), (3, 1)])
@pytest.mark.parametrize(("scale", "offset"), VARIANTS)
def test_triton_matches_reference_fp32(shape, scale, offset):
    x, weight, dy = _inputs(shape, torch.float32, offset=offset)
    kwargs = {"eps": 1e-6, "scale": scale, "offset": offset}
    ours = _forward_backward(x, weight, dy, "triton", **kwargs)
    ref = _forward_backward(x, weight, dy, "torch", **kwargs)
    for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(
            got, want, **TOLERANCES[torch.float32], msg=lambda m, n=name: f"{n}: {m}"
        )


def _assert_half_close(ours, ref, x, dy, scale, eps):
    """y and dx within TOLERANCES; dweight within a bound derived from its row sum (see below)."""
    dtype = x.dtype
    for name, got, want in zip(("y", "dx"), ours[:2], ref[:2]):
        assert got.dtype == dtype, name
        torch.testing.assert_close(
            got, want, **TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}"
        )
    # dweight = scale * sum_rows(dy * cast(n)): each term may see cast(n) up to two ulps apart
    # (rstd summed in another order flips a rounding; the Triton interpreter also rounds fp32->bf16
    # toward zero, which the GPU does not), and such errors add up over rows rather than cancel.
    # Bound: 2 ulps of scale * sum_rows |dy * n|, plus the final rounding of each result.
    ulp = torch.finfo(dtype).eps  # one ulp of v is at most eps * |v|
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    terms = (dy.float() * normed).abs().reshape(-1, x.shape[-1]).sum(0)
    bound = 2 * ulp * abs(scale) * terms + ulp * ref[2].float().abs()
    err = (ours[2].float() - ref[2].float()).abs()
    assert ours[2].dtype == ref[2].dtype
    assert (err <= bound).all(), f"dweight off by {(err - bound).max().item()} beyond the bound"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (0.5, 1.0)])
def test_triton_matches_reference_half(dtype, scale, offset):
    # The kernels load 16-bit values and compute in fp32: the interpreter's 16-bit arithmetic is
    # wrong, its fp32 is not.
    x, weight, dy = _inputs((37, 130), dtype, seed=1, offset=offset)
    kwargs = {"eps": 1e-5, "scale": scale, "offset": offset}
    ours = _forward_backward(x, weight, dy, "triton", **kwargs)
    ref = _forward_backward(x, weight, dy, "torch", **kwargs)
    _assert_half_close(ours, ref, x, dy, scale, eps=1e-5)


def test_launch_config_exercises_several_programs_and_tiles():
    # The (67, 1000) case above must run more than one program, and more tiles than programs, so
    # that the per-program dweight partial sums and the row loop with its masked last tile are tested.
    block_m, block_n, programs, _ = _triton._launch_config(67, 1000, torch.device(DEVICE))
    assert block_n == 1024
    assert programs > 1
    assert math.ceil(67 / block_m) > programs


@EPS0_PADDING
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hand_derived_values(backend):
    # eps=0: row [2,-2,2,-2] has rms 2, row [3,0,4,0] has rms sqrt(25/4) = 2.5.
    x = torch.tensor([[2.0, -2.0, 2.0, -2.0], [3.0, 0.0, 4.0, 0.0]], device=DEVICE)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0], device=DEVICE)
    y = rms_norm(x, weight, eps=0.0, scale=0.5, backend=backend)
    want = torch.tensor([[0.5, -1.0, 1.5, -2.0], [0.6, 0.0, 2.4, 0.0]], device=DEVICE)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    y_gemma = rms_norm(x, weight - 1.0, eps=0.0, scale=0.5, offset=1.0, backend=backend)
    torch.testing.assert_close(y_gemma, want, rtol=1e-6, atol=1e-6)


@EPS0_PADDING
def test_triton_input_gradient_is_orthogonal_to_input():
    # With eps=0, y(c * x) = y(x) for every c > 0, so d(loss)/dx . x = 0 row by row: a property of
    # the Triton backward that does not go through the reference.
    x, weight, dy = _inputs((9, 77), torch.float32, seed=2)
    _, dx, _ = _forward_backward(x, weight, dy, "triton", eps=0.0, scale=0.7)
    cosine = (dx * x).sum(-1) / (dx.norm(dim=-1) * x.norm(dim=-1))
    assert cosine.abs().max().item() < 1e-5


def test_triton_scale_is_linear():
    # y, dx and dweight are all linear in the scale; a power of two scales every rounding exactly.
    x, weight, dy = _inputs((6, 48), torch.float32, seed=3)
    y1, dx1, dw1 = _forward_backward(x, weight, dy, "triton", scale=1.0)
    y4, dx4, dw4 = _forward_backward(x, weight, dy, "triton", scale=0.25)
    for got, want in ((y4, y1), (dx4, dx1), (dw4, dw1)):
        assert torch.equal(got, 0.25 * want)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_input_and_gradient(backend):
    x, weight, _ = _inputs((9, 40), torch.float32, seed=4)
    column_strided = x.t().contiguous().t()  # strides (1, 9): copied to rows
    row_strided = torch.cat([x, x], dim=1)[:, :40]  # strides (80, 1): read in place
    proj = torch.randn(40, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for x_nc in (column_strided, row_strided):
        assert not x_nc.is_contiguous()
        x_c = x_nc.detach().contiguous().requires_grad_()
        x_nc = x_nc.detach().requires_grad_()
        y_nc = rms_norm(x_nc, weight, backend=backend)
        # (y * proj).sum() sends back an expanded gradient whose row stride is 0.
        (y_nc * proj).sum().backward()
        y_c = rms_norm_naive(x_c, weight)
        (y_c * proj).sum().backward()
        torch.testing.assert_close(y_nc, y_c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_nc.grad, x_c.grad, rtol=1e-5, atol=1e-5)


def test_triton_gradient_of_one_input_only():
    # backward skips the gradients autograd did not ask for; the one it asked for is still right.
    x, weight, dy = _inputs((4, 16), torch.float32, seed=6)
    _, dx_ref, dw_ref = _forward_backward(x, weight, dy, "torch")
    x_only = x.clone().requires_grad_()
    rms_norm(x_only, weight, backend="triton").backward(dy)
    torch.testing.assert_close(x_only.grad, dx_ref, rtol=1e-5, atol=1e-5)
    weight_only = weight.clone().requires_grad_()
    rms_norm(x, weight_only, backend="triton").backward(dy)
    torch.testing.assert_close(weight_only.grad, dw_ref, rtol=1e-5, atol=1e-5)


def _hf_llama_norm(hidden, eps, dtype, seed=0):
    norm = LlamaRMSNorm(hidden, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(
            1 + 0.3 * torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
        )
    return norm.to(dtype)


def test_reference_is_hf_llama_bit_for_bit_fp32():
    hf = _hf_llama_norm(96, 1e-5, torch.float32)
    x = torch.randn(4, 3, 96, generator=torch.Generator().manual_seed(7)).requires_grad_()
    dy = torch.randn(4, 3, 96, generator=torch.Generator().manual_seed(8))
    y_hf = hf(x)
    dx_hf, dw_hf = torch.autograd.grad(y_hf, (x, hf.weight), dy)
    y = rms_norm(x, hf.weight, eps=1e-5, backend="torch")
    dx, dw = torch.autograd.grad(y, (x, hf.weight), dy)
    assert torch.equal(y, y_hf)
    assert torch.equal(dx, dx_hf)
    assert torch.equal(dw, dw_hf)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_is_hf_llama_bit_for_bit_half(dtype):
    # HF casts the fp32-normalised x to the input dtype, then multiplies by the weight in that dtype.
    hf = _hf_llama_norm(64, 1e-6, dtype, seed=1)
    x = (3 * torch.randn(5, 64, generator=torch.Generator().manual_seed(9))).to(dtype)
    y = rms_norm(x, hf.weight, eps=1e-6, backend="torch")
    assert y.dtype == dtype
    assert torch.equal(y, hf(x))


def test_reference_is_hf_gemma_bit_for_bit_fp32():
    hf = GemmaRMSNorm(80, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(0.3 * torch.randn(80, generator=torch.Generator().manual_seed(10)))
    x = torch.randn(6, 80, generator=torch.Generator().manual_seed(11))
    assert torch.equal(rms_norm(x, hf.weight, eps=1e-6, offset=1.0, backend="torch"), hf(x))


def test_gemma_half_casting_differs_by_at_most_one_rounding():
    # Gemma keeps the normalised x in fp32 until the end; we round it to bf16 first (Llama's order).
    hf = GemmaRMSNorm(80, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(0.3 * torch.randn(80, generator=torch.Generator().manual_seed(12)))
    hf = hf.to(torch.bfloat16)
    x = torch.randn(6, 80, generator=torch.Generator().manual_seed(13)).to(torch.bfloat16)
    y = rms_norm(x, hf.weight, eps=1e-6, offset=1.0, backend="torch").float()
    y_hf = hf(x).float()
    assert not torch.equal(y, y_hf)
    assert ((y - y_hf).abs() <= 2**-7 * y_hf.abs() + 1e-6).all()


def test_triton_matches_hf_llama():
    hf = _hf_llama_norm(123, 1e-6, torch.float32, seed=2).to(DEVICE)
    x = torch.randn(2, 5, 123, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    torch.testing.assert_close(
        rms_norm(x, hf.weight, backend="triton"), hf(x), **TOLERANCES[torch.float32]
    )


def test_weight_shape_is_checked():
    with pytest.raises(ValueError, match=r"weight of shape \[hidden\] = \[8\]"):
        rms_norm(torch.randn(2, 8), torch.ones(4))


def test_fp64_is_left_to_the_reference():
    # The kernels compute in fp32: an explicit Triton request in fp64 is refused, auto runs torch.
    x = torch.randn(3, 8, dtype=torch.float64, device=DEVICE)
    weight = torch.rand(8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="got torch.float64: pass backend='torch'"):
        rms_norm(x, weight, backend="triton")
    assert torch.equal(rms_norm(x, weight), rms_norm_naive(x, weight))


def test_kernels_compile_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.rms_norm import _triton as k

        common = {"n_rows": "i32", "n_cols": "i32"}
        for dt in ("fp32", "bf16", "fp16"):
            fwd = {"X": f"*{dt}", "W": f"*{dt}", "Y": f"*{dt}", "RSTD": "*fp32", "stride_x": "i64",
                   "stride_y": "i64", "eps": "fp32", "scale": "fp32", "offset": "fp32", **common}
            bwd = {"DY": f"*{dt}", "X": f"*{dt}", "W": f"*{dt}", "RSTD": "*fp32", "DX": f"*{dt}",
                   "DW_PARTIAL": "*fp32", "stride_dy": "i64", "stride_x": "i64", "stride_dx": "i64",
                   "scale": "fp32", "offset": "fp32", **common}
            for kernel, sig, block_m in ((k._rms_norm_fwd_kernel, fwd, 1),
                                         (k._rms_norm_bwd_kernel, bwd, 4)):
                compile_sm90(kernel, sig, {"BLOCK_M": block_m, "BLOCK_N": 4096}, num_warps=8)
        """
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 512, 4096), (1000, 1000), (3, 17, 8192)])
def test_triton_cuda_llm_sizes(shape, dtype):
    x, weight, dy = _inputs(shape, dtype, seed=15)
    kwargs = {"eps": 1e-6, "scale": 1 / math.sqrt(12)}
    ours = _forward_backward(x, weight, dy, "auto", **kwargs)
    ref = _forward_backward(x, weight, dy, "torch", **kwargs)
    if dtype == torch.float32:
        for name, got, want in zip(("y", "dx", "dweight"), ours, ref):
            torch.testing.assert_close(
                got, want, **TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}"
            )
    else:
        _assert_half_close(ours, ref, x, dy, kwargs["scale"], kwargs["eps"])
