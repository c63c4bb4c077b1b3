"""fake_quant: Triton (interpreted on CPU, compiled on CUDA) vs the torch reference vs hand values,
straight-through gradients, and the Linear patcher."""

import pytest
import torch
from torch import nn

from layerwise_kernels.fake_quant import (
    FakeQuantLinear,
    apply_fake_quant,
    fake_quant,
    fake_quant_naive,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def test_int4_hand_values():
    # max 7 -> scale 1: plain round-half-even, clamped to +-7.
    x = torch.tensor([[7.0, 2.5, 3.5, -0.5, -1.6, 0.49]])
    want = torch.tensor([[7.0, 2.0, 4.0, -0.0, -2.0, 0.0]])
    for backend in ("torch", "triton"):
        assert torch.equal(fake_quant(x.to(DEVICE), "int4", backend=backend).cpu(), want)


def test_int8_scale_is_per_row():
    x = torch.tensor([[127.0, 1.0, -0.6], [254.0, 3.0, 1.0]])  # scales 1 and 2
    want = torch.tensor([[127.0, 1.0, -1.0], [254.0, 4.0, 0.0]])
    for backend in ("torch", "triton"):
        assert torch.equal(fake_quant(x.to(DEVICE), "int8", backend=backend).cpu(), want)


def test_fp4_rounds_to_the_nearest_e2m1_value_ties_to_even():
    # max 6 -> scale 1. Ties: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4.
    x = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.1, 0.3, 2.9, -0.1]])
    want = torch.tensor([[6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -6.0, 0.5, 3.0, -0.0]])
    for backend in ("torch", "triton"):
        got = fake_quant(x.to(DEVICE), "fp4", backend=backend).cpu()
        assert torch.equal(got, want), backend


@pytest.mark.parametrize("mode", ["int8", "int4", "fp4"])
@pytest.mark.parametrize(
    ("shape", "group_size"),
    [((5, 123), None), ((2, 3, 64), 16), ((67, 1000), None), ((4, 1), None)],
)
def test_triton_matches_reference_fp32(mode, shape, group_size):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3).to(DEVICE)
    got = fake_quant(x, mode, group_size=group_size, backend="triton")
    want = fake_quant(x, mode, group_size=group_size, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Every output is a representable value times its group's scale.
    rows = want.reshape(-1, group_size or shape[-1])
    scale = (
        x.reshape(rows.shape).abs().amax(1, keepdim=True) / {"int8": 127, "int4": 7, "fp4": 6}[mode]
    )
    levels = (rows / scale).abs()
    grid = E2M1.to(levels.device) if mode == "fp4" else torch.arange(128.0, device=levels.device)
    distance = (levels[..., None] - grid).abs().amin(-1)
    assert distance.max() < 1e-4


def test_bf16_within_one_ulp():
    x = (torch.randn(9, 96) * 2).to(DEVICE, torch.bfloat16)
    got = fake_quant(x, "int4", backend="triton")
    want = fake_quant(x, "int4", backend="torch")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradient_is_straight_through(backend):
    x = torch.randn(6, 32, device=DEVICE, requires_grad=True)
    dy = torch.randn(6, 32, device=DEVICE)
    fake_quant(x, "fp4", backend=backend).backward(dy)
    assert torch.equal(x.grad, dy)


def test_zero_rows_stay_zero():
    x = torch.zeros(3, 8, device=DEVICE)
    for backend in ("torch", "triton"):
        assert torch.equal(fake_quant(x, "int4", backend=backend), x)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="mode must be one of"):
        fake_quant(torch.ones(2, 2), "int2")
    with pytest.raises(ValueError, match="divide the last dim"):
        fake_quant(torch.ones(2, 6), "int4", group_size=4)
    with pytest.raises(TypeError, match="floating"):
        fake_quant(torch.ones(2, 2, dtype=torch.int32), "int4")


def test_apply_fake_quant_patches_linears_and_keeps_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.lm_head = nn.Linear(4, 3)
    params_before = list(model.parameters())
    keys_before = list(model.state_dict())
    x = torch.randn(5, 8)
    apply_fake_quant(model, "int8")
    assert isinstance(model[0], FakeQuantLinear) and isinstance(model[2], FakeQuantLinear)
    assert type(model.lm_head) is nn.Linear  # skipped by default
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    assert list(model.state_dict()) == keys_before
    # The patched layer computes fq(x) @ fq(W)^T + b.
    layer = model[0]
    want = fake_quant_naive(x, "int8") @ fake_quant_naive(layer.weight, "int8").T + layer.bias
    torch.testing.assert_close(layer(x), want)
    model(x).sum().backward()
    assert model[0].weight.grad is not None
    assert apply_fake_quant(nn.Linear(2, 2), "none").__class__ is nn.Linear


def test_kernel_compiles_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.fake_quant import _triton as k

        for dt in ("fp32", "bf16", "fp16"):
            for fp4 in (False, True):
                sig = {"X": f"*{dt}", "Y": f"*{dt}", "n_rows": "i32", "n_cols": "i32",
                       "qmax": "fp32"}
                const = {"FP4": fp4, "BLOCK_M": 16, "BLOCK_N": 256}
                compile_sm90(k._fake_quant_kernel, sig, const, num_warps=8)
        """
    )
