"""top2_confidence: Triton (interpreted on CPU, compiled on CUDA) vs the torch reference vs an explicit
fp64 softmax, including LLaDA's vocabulary size 126464."""

import pytest
import torch

from layerwise_kernels.top2_confidence import top2_confidence, top2_confidence_naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _softmax_truth(logits: torch.Tensor):
    """What the op means, from the materialised fp64 softmax."""
    p = torch.softmax(logits.double(), dim=-1)
    top2 = torch.topk(p, 2, dim=-1).values
    return logits.argmax(-1), top2[..., 0], torch.log(top2[..., 0]) - torch.log(top2[..., 1])


def _logits(shape, seed=0, scale=3.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(DEVICE, dtype)


def _check(got, want, rtol=1e-5, atol=1e-6):
    token, prob, gap = got
    assert torch.equal(token.cpu(), want[0].cpu())
    torch.testing.assert_close(prob.double().cpu(), want[1].double().cpu(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gap.double().cpu(), want[2].double().cpu(), rtol=rtol, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 123), (2, 3, 1000), (67, 33), (3, 2), (1, 40000)])
def test_triton_matches_reference_and_softmax(shape):
    logits = _logits(shape)
    ours = top2_confidence(logits, backend="triton")
    ref = top2_confidence(logits, backend="torch")
    assert ours.token.shape == shape[:-1] and ours.prob.dtype == torch.float32
    _check(ours, ref)
    _check(ref, _softmax_truth(logits))


def test_llada_vocabulary_126464():
    # Few rows, one 32K-column chunk per step of the vocabulary loop: a tiny interpreter grid.
    logits = _logits((2, 3, 126464), seed=1, scale=4.0)
    logits[0, 1, 126081] = 30.0  # a confident token far into the vocabulary (LLaDA's EOS id)
    ours = top2_confidence(logits, backend="triton")
    _check(ours, top2_confidence(logits, backend="torch"))
    _check(ours, _softmax_truth(logits))
    assert ours.token[0, 1] == 126081 and ours.prob[0, 1] > 0.99


def test_hand_derived_values_ties_and_minus_inf():
    inf = float("inf")
    logits = torch.tensor(
        [
            [0.0, 1.0, 1.0, -inf],  # tie at the top: first index, gap 0, p = e / (2e + 1)
            [-inf, 2.0, -inf, -inf],  # one finite entry: p = 1, gap inf
            [3.0, 0.0, 0.0, 0.0],  # p = e^3 / (e^3 + 3), gap 3
        ]
    ).to(DEVICE)
    e = torch.e
    for backend in ("torch", "triton"):
        token, prob, gap = top2_confidence(logits, backend=backend)
        assert token.tolist() == [1, 1, 0]
        want = torch.tensor([e / (2 * e + 1), 1.0, e**3 / (e**3 + 3)])
        torch.testing.assert_close(prob.cpu(), want, rtol=1e-6, atol=1e-7)
        assert gap.tolist() == [0.0, inf, 3.0]


def test_bf16_and_strided_inputs():
    logits = _logits((4, 6, 300), seed=2, dtype=torch.bfloat16)
    _check(top2_confidence(logits, backend="triton"), top2_confidence_naive(logits))
    wide = _logits((5, 2, 700), seed=3)
    strided = wide[:, 1, ::2]  # non-contiguous rows and columns
    _check(top2_confidence(strided, backend="triton"), _softmax_truth(strided))


def test_dispatch_and_errors():
    cpu = torch.randn(3, 10)
    assert torch.equal(top2_confidence(cpu).token, cpu.argmax(-1))  # auto on CPU: the reference
    with pytest.raises(ValueError, match="V >= 2"):
        top2_confidence(torch.randn(3, 1))
    with pytest.raises(TypeError, match="backend='torch'"):
        top2_confidence(torch.randn(3, 10, dtype=torch.float64).to(DEVICE), backend="triton")
    token, prob, _ = top2_confidence(torch.randn(3, 10, dtype=torch.float64))
    assert prob.dtype == torch.float64 and token.dtype == torch.int64


def test_kernel_compiles_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.top2_confidence import _triton as k

        for dt in ("fp32", "bf16", "fp16"):
            sig = {"X": f"*{dt}", "TOKEN": "*i64", "PROB": "*fp32", "GAP": "*fp32",
                   "n_rows": "i32", "n_cols": "i32", "stride_x": "i64"}
            compile_sm90(k._top2_confidence_kernel, sig, {"BLOCK_M": 1, "BLOCK_V": 4096}, 8)
        """
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda_llada_sizes(dtype):
    logits = _logits((1, 512, 126464), seed=4, dtype=dtype)
    ours = top2_confidence(logits)  # auto: Triton on CUDA
    _check(ours, top2_confidence_naive(logits))
