"""SPAM / Stable-SPAM step kernels: Triton (interpreted on CPU, compiled on CUDA) vs the torch reference.

The reference (`naive.py`) is itself checked against the equations written out per element.
"""

import math

import pytest
import torch

from layerwise_kernels.spam_step import (
    per_tensor_abs_max,
    per_tensor_clipped_sq_norm,
    spam_step_,
    spam_step_naive_,
    stable_spam_step_,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Odd sizes: a partial block, several blocks, a single element, an empty tensor.
SHAPES = [(3, 700), (5,), (2049,), (0,), (33, 65), (1,)]
# fp32 / fp64: the two paths differ in rounding only. bf16: the interpreter rounds fp32 -> bf16
# toward zero where torch rounds to nearest, so one bf16 ulp.
TOLERANCES = {
    torch.float64: dict(rtol=1e-13, atol=1e-13),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2**-7, atol=2**-7),
}


def _lists(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(scale, shape, positive=False):
        t = torch.rand(shape, generator=gen) if positive else torch.randn(shape, generator=gen)
        return (t * scale).to(DEVICE, dtype)

    params = [rand(1.0, s) for s in SHAPES]
    grads = [rand(3.0, s) for s in SHAPES]
    exp_avgs = [rand(0.1, s) for s in SHAPES]
    exp_avg_sqs = [rand(0.01, s, positive=True) for s in SHAPES]
    return params, grads, exp_avgs, exp_avg_sqs


def _assert_lists_close(got, want, dtype):
    for a_list, b_list in zip(got, want):
        for a, b in zip(a_list, b_list):
            torch.testing.assert_close(a, b, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("clip_threshold", [0.0, 50.0])
def test_spam_step_triton_matches_reference(dtype, clip_threshold):
    ours, ref = _lists(dtype), _lists(dtype)
    steps = [1e-3 * (i + 1) for i in range(len(SHAPES))]
    kwargs = dict(beta1=0.9, beta2=0.999, eps=1e-6, clip_threshold=clip_threshold, decay=0.99)
    spam_step_(*ours, steps, write_clipped_grad=True, backend="triton", **kwargs)
    spam_step_(*ref, steps, write_clipped_grad=True, backend="torch", **kwargs)
    _assert_lists_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reset_moments", ["none", "before", "after"])
def test_stable_spam_step_triton_matches_reference(dtype, reset_moments):
    ours, ref = _lists(dtype), _lists(dtype)
    gen = torch.Generator().manual_seed(5)
    n = len(SHAPES)
    vectors = [torch.rand(n, generator=gen, dtype=torch.float64) * s for s in (3, 1, 2, 1e-3, 1e-8)]
    kwargs = dict(beta1=0.6, beta2=0.999, decay=0.999, reset_moments=reset_moments)
    stable_spam_step_(*ours, *vectors, write_clipped_grad=True, backend="triton", **kwargs)
    stable_spam_step_(*ref, *vectors, write_clipped_grad=True, backend="torch", **kwargs)
    _assert_lists_close(ours, ref, dtype)
    if reset_moments == "after":
        assert all(torch.all(m == 0) for m in ours[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_per_tensor_statistics_match_reference(dtype):
    _, grads, _, _ = _lists(dtype)
    torch.testing.assert_close(
        per_tensor_abs_max(grads, backend="triton"), per_tensor_abs_max(grads, backend="torch")
    )
    at = [0.5 * (i + 1) for i in range(len(grads))]
    ratio = [0.1 * (i + 1) for i in range(len(grads))]
    got = per_tensor_clipped_sq_norm(grads, at, ratio, backend="triton")
    want = per_tensor_clipped_sq_norm(grads, at, ratio, backend="torch")
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    assert got[3] == 0  # the empty tensor


def test_reference_follows_the_equations_elementwise():
    # One element per tensor, worked out with Python floats.
    p, g, m, v = ([torch.tensor([x], dtype=torch.float64)] for x in (1.0, 4.0, 0.5, 0.25))
    spam_step_naive_(p, g, m, v, [0.1], beta1=0.9, beta2=0.99, eps=1e-8, clip_threshold=2.0,
                     decay=0.98, write_clipped_grad=True)  # fmt: skip
    clipped = math.sqrt(2.0 * 0.25)  # 16 > 2 * 0.25: a spike
    m_new = 0.9 * 0.5 + 0.1 * clipped
    v_new = 0.99 * 0.25 + 0.01 * clipped**2
    p_new = (1.0 - 0.1 * m_new / (math.sqrt(v_new) + 1e-8)) * 0.98
    assert g[0].item() == pytest.approx(clipped, rel=1e-15)
    assert m[0].item() == pytest.approx(m_new, rel=1e-15)
    assert v[0].item() == pytest.approx(v_new, rel=1e-15)
    assert p[0].item() == pytest.approx(p_new, rel=1e-15)


def test_mismatched_lists_and_dtypes_get_clear_errors():
    p = [torch.zeros(3)]
    with pytest.raises(ValueError, match="one tensor per parameter"):
        spam_step_(p, [], [], [], [0.1], beta1=0.9, beta2=0.99, eps=1e-8)
    with pytest.raises(ValueError, match="must have one shape"):
        spam_step_(p, [torch.zeros(4)], [torch.zeros(3)], [torch.zeros(3)], [0.1], beta1=0.9,
                   beta2=0.99, eps=1e-8)  # fmt: skip
    mixed = [torch.zeros(3), torch.zeros(3, dtype=torch.float64)]
    with pytest.raises(TypeError, match="backend='torch'"):
        per_tensor_abs_max(mixed, backend="triton")
    with pytest.raises(ValueError, match="reset_moments"):
        stable_spam_step_(
            p, p, p, p, [1], [1], [1], [1], [1], beta1=0.9, beta2=0.9, reset_moments="x"
        )


def test_auto_runs_the_reference_on_cpu():
    a, b = _lists(torch.float32), _lists(torch.float32)
    kwargs = dict(beta1=0.9, beta2=0.999, eps=1e-6, clip_threshold=50.0)
    spam_step_(*a, [1e-3] * len(SHAPES), **kwargs)
    spam_step_naive_(*b, [1e-3] * len(SHAPES), **kwargs)
    if DEVICE == "cpu":
        for x, y in zip(a[0], b[0]):
            assert torch.equal(x, y)


def test_kernels_compile_for_hopper_without_a_gpu(compiles_for_hopper):
    # Parameters / moments in fp32 or bf16 with fp32 compute, and fp64 throughout.
    compiles_for_hopper(
        """
        from layerwise_kernels.spam_step import _triton as k

        table = {"ADDRS": "*i64", "NUMELS": "*i64", "BLOCK_TENSOR": "*i32",
                 "BLOCK_START": "*i64", "n_tensors": "i32", "n_blocks": "i32"}
        for p_dt, compute in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
            types = {name: getattr(tl, {"fp32": "float32", "bf16": "bfloat16",
                                        "fp64": "float64"}[dt])
                     for name, dt in (("P_TYPE", p_dt), ("G_TYPE", p_dt), ("M_TYPE", "fp32"),
                                      ("V_TYPE", "fp32"), ("COMPUTE", compute))}
            for flag in (False, True):
                const = {**types, "CLIP": flag, "WRITE_GRAD": flag, "BLOCK": 2048}
                sig = {**table, "STEPS": f"*{compute}", "SCALARS": f"*{compute}"}
                compile_sm90(k._spam_step_kernel, sig, const, num_warps=8)
            for reset in (0, 1, 2):
                const = {**types, "RESET": reset, "WRITE_GRAD": True, "BLOCK": 2048}
                sig = {**table, "VECTORS": f"*{compute}", "SCALARS": f"*{compute}"}
                compile_sm90(k._stable_spam_step_kernel, sig, const, num_warps=8)
            for clipped in (False, True):
                const = {"X_TYPE": types["G_TYPE"], "COMPUTE": types["COMPUTE"],
                         "CLIPPED_SQ_NORM": clipped, "BLOCK": 2048}
                sig = {**table, "VECTORS": f"*{compute}", "PARTIAL": f"*{compute}"}
                compile_sm90(k._partials_kernel, sig, const, num_warps=8)
        """
    )
