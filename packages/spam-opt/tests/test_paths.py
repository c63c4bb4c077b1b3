"""The three execution paths (single-tensor, foreach, fused Triton) give the same trajectory.

The fused path runs its Triton kernels through the interpreter on CPU (compiled on a GPU, where
every path runs on CUDA tensors). The
problem mixes what a real model has: matrices and vectors of odd sizes, an empty tensor, a frozen
parameter, a parameter whose gradient comes and goes, two param groups with their own lr and weight
decay (and for SPAM a sparse-momentum group), spikes, and momentum resets.
"""

import pytest
import torch

from spam_opt import SPAM, StableSPAM
from spam_opt._optimizer import choose_path

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(7, 130), (5,), (1100,), (0, 3), (33, 17), (3, 3)]
STEPS = 12
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-6, atol=1e-6),
}
OPTIMIZERS = {
    "spam": (SPAM, dict(warmup_steps=3, reset_interval=5, clip_delay=2, threshold=3.0)),
    "stable_spam": (StableSPAM, dict(total_steps=8, reset_interval=5, gamma3=0.99)),
}


def _trajectory(name, dtype, reference_quirks, **path):
    cls, hyper = OPTIMIZERS[name]
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE, dtype))
        for s in SHAPES
    ]
    frozen = torch.nn.Parameter(torch.ones(4, dtype=dtype, device=DEVICE))
    groups = [
        {"params": [*params[:3], frozen], "weight_decay": 0.1},
        {"params": params[3:5], "lr": 3e-3},
    ]
    if cls is SPAM:
        groups.append({"params": params[5:], "density": 0.5})
    else:
        groups[1]["params"] = params[3:]
    torch.manual_seed(1)  # the sparse-momentum masks
    opt = cls(groups, lr=1e-2, reference_quirks=reference_quirks, **hyper, **path)
    grads_seen = []
    for step in range(STEPS):
        for i, p in enumerate(params):
            if i == 1 and step % 3 == 2:
                p.grad = None  # comes and goes
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if step in (4, 8) and g.numel():
                g.view(-1)[0] *= 300.0
            p.grad = g.to(DEVICE, dtype)
        opt.step()
        grads_seen.append([None if p.grad is None else p.grad.clone() for p in params])
    assert len(opt.state[frozen]) == 0
    return [p.detach().clone() for p in params], grads_seen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reference_quirks", [False, True], ids=["paper", "quirks"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_single_foreach_and_fused_agree(name, reference_quirks, dtype):
    single = _trajectory(name, dtype, reference_quirks, foreach=False)
    for path in (dict(foreach=True), dict(fused=True)):
        other = _trajectory(name, dtype, reference_quirks, **path)
        for got, want in zip(other[0], single[0]):
            torch.testing.assert_close(
                got, want, **TOLERANCES[dtype], msg=lambda m, p=path: f"{p}: {m}"
            )
        # With reference_quirks the clipped gradient is written into p.grad on every path.
        for step_got, step_want in zip(other[1], single[1]):
            for got, want in zip(step_got, step_want):
                if want is not None:
                    torch.testing.assert_close(got, want, **TOLERANCES[dtype])


def test_default_path_is_foreach_off_cuda():
    assert choose_path("SPAM", None, None, [torch.ones(2)]) == "foreach"
    assert choose_path("SPAM", False, None, [torch.ones(2)]) == "single"
    assert choose_path("SPAM", None, False, [torch.ones(2)]) == "foreach"


def test_fused_without_a_gpu_or_interpreter_names_the_fix(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        StableSPAM([p], fused=True).step()


def test_fused_rejects_unsupported_dtypes_with_the_fix():
    with pytest.raises(TypeError, match="fused=False"):
        choose_path("SPAM", None, True, [torch.ones(2, dtype=torch.complex64)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_defaults_to_fused_and_bf16_agrees_with_foreach(name):
    assert choose_path("SPAM", None, None, [torch.ones(2, device="cuda")]) == "fused"
    fused = _trajectory(name, torch.bfloat16, False)  # fused=None: auto
    foreach = _trajectory(name, torch.bfloat16, False, foreach=True)
    # The fused step rounds to bf16 once per step, torch's foreach ops after every op (m, v, sqrt(v)):
    # a couple of bf16 ulps of the parameters after 12 steps.
    for got, want in zip(fused[0], foreach[0]):
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-5, atol=2**-5)
