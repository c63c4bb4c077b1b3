"""CoELayer vs a per-token, per-expert loop written from the paper's equations; C=1 vs plain MoE;
every dispatch backend vs the others."""

import copy

import pytest
import torch
import torch.nn.functional as F

import coe_moe
import layerwise_kernels
from coe_moe import CoELayer, experts_forward

HIDDEN, WIDTH, EXPERTS = 8, 4, 6


def _layer(dtype=torch.float64, seed=0, std=0.5, **kwargs):
    """A CoELayer with weights large enough that experts and routing matter."""
    torch.manual_seed(seed)
    args = dict(hidden_size=HIDDEN, moe_intermediate_size=WIDTH, num_experts=EXPERTS, top_k=2)
    layer = CoELayer(**{**args, **kwargs}).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, std)
    return layer


def _silu(v):
    return v / (1 + torch.exp(-v))


def _swiglu(z, w_gate, w_up, w_down):
    return w_down @ (_silu(w_gate @ z) * (w_up @ z))


@torch.no_grad()
def hand_coe(x, layer):
    """z_{t+1} = z_t + sum_{i in TopK(p_t)} p_{t,i} E_i(z_t) + Shared(z_t), one token at a time."""
    gate_up, down = layer.experts.gate_up_proj, layer.experts.down_proj
    width = down.shape[2]
    rows = []
    for z in x.reshape(-1, x.shape[-1]):
        for t in range(layer.num_iterations):
            router = layer.routers[t if len(layer.routers) > 1 else 0].weight
            p = torch.exp(router @ z) / torch.exp(router @ z).sum()
            ranked = sorted(range(p.shape[0]), key=lambda i: -float(p[i]))
            update = torch.zeros_like(z)
            for i in ranked[: layer.top_k]:
                update = update + p[i] * _swiglu(z, gate_up[i, :width], gate_up[i, width:], down[i])
            if layer.shared_experts is not None:
                s = layer.shared_experts
                update = update + _swiglu(
                    z, s.gate_proj.weight, s.up_proj.weight, s.down_proj.weight
                )
            z = z + update if layer.inner_residual else update
        rows.append(z)
    return torch.stack(rows).view(x.shape)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_iterations": 2, "top_k": 2},  # the paper's block, small
        {"num_iterations": 3, "top_k": 1, "num_shared_experts": 0},
        {"num_iterations": 2, "top_k": 3, "num_shared_experts": 2, "inner_residual": False},
        {"num_iterations": 2, "top_k": 2, "independent_routers": False},  # shared-gate ablation
        {"num_iterations": 1, "top_k": 6},  # every expert selected
    ],
)
def test_layer_equals_hand_written_loop_fp64(kwargs):
    layer = _layer(**kwargs)
    x = torch.randn(2, 5, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), hand_coe(x, layer), rtol=1e-12, atol=1e-12)


def test_one_iteration_is_a_plain_top_k_moe_fp64():
    """C = 1: y = x + sum_{i in TopK(softmax(W x))} p_i E_i(x) + Shared(x), written as an MoE."""
    layer = _layer(num_iterations=1, top_k=2)
    x = torch.randn(7, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    probs = F.softmax(x @ layer.routers[0].weight.T, dim=-1)
    weights, chosen = probs.topk(2, dim=-1)
    gate_up, down = layer.experts.gate_up_proj, layer.experts.down_proj
    moe = torch.zeros_like(x)
    for e in range(EXPERTS):  # a standard MoE: loop over experts, each on its tokens
        tok, slot = torch.where(chosen == e)
        gate, up = (x[tok] @ gate_up[e].T).chunk(2, dim=-1)
        moe[tok] += weights[tok, slot, None] * ((F.silu(gate) * up) @ down[e].T)
    shared = layer.shared_experts(x)
    torch.testing.assert_close(layer(x), x + moe + shared, rtol=1e-12, atol=1e-12)
    layer.inner_residual = False
    torch.testing.assert_close(layer(x), moe + shared, rtol=1e-12, atol=1e-12)


def test_matches_transformers_qwen2_moe_experts():
    """C = 1 without residual and shared expert equals transformers' Qwen2-MoE router + experts.

    Qwen2-MoE takes its softmax in fp32 even for fp64 inputs, hence the fp32-level tolerance.
    """
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import (
        Qwen2MoeExperts,
        Qwen2MoeTopKRouter,
    )

    layer = _layer(num_iterations=1, top_k=3, num_shared_experts=0, inner_residual=False)
    cfg = Qwen2MoeConfig(
        hidden_size=HIDDEN, moe_intermediate_size=WIDTH, num_experts=EXPERTS,
        num_experts_per_tok=3, norm_topk_prob=False,
    )  # fmt: skip
    router, experts = Qwen2MoeTopKRouter(cfg).double(), Qwen2MoeExperts(cfg).double()
    with torch.no_grad():
        router.weight.copy_(layer.routers[0].weight)
        experts.gate_up_proj.copy_(layer.experts.gate_up_proj)
        experts.down_proj.copy_(layer.experts.down_proj)
    x = torch.randn(9, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, weights, chosen = router(x)
    torch.testing.assert_close(layer(x), experts(x, chosen, weights), rtol=1e-6, atol=1e-6)


def _run(layer, x, dy, backend):
    layer.zero_grad()
    layer.experts.backend = backend
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("backend", ["grouped_mm", "triton"])
def test_dispatch_backends_equal_fp32(backend):
    # hidden 16 and expert width 8: rows of 64 and 32 bytes, as torch's grouped GEMM needs
    torch.manual_seed(4)
    layer = CoELayer(16, 8, num_experts=8, top_k=3, num_iterations=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    gen = torch.Generator().manual_seed(5)
    x, dy = torch.randn(2, 11, 16, generator=gen), torch.randn(2, 11, 16, generator=gen)
    y_ref, dx_ref, g_ref = _run(layer, x, dy, "torch")
    y, dx, grads = _run(layer, x, dy, backend)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(grads[name], g_ref[name], rtol=1e-5, atol=1e-5, msg=name)
    # and all of them follow the equations (fp32 vs the fp64 loop)
    torch.testing.assert_close(
        y, hand_coe(x.double(), copy.deepcopy(layer).double()).float(), rtol=1e-5, atol=1e-5
    )


def test_experts_forward_with_empty_and_overfull_experts():
    """Every token to expert 2 (slot 0) and expert 0 (slot 1): most experts get no token."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 16, generator=gen)
    gate_up, down = torch.randn(4, 16, 16, generator=gen), torch.randn(4, 16, 8, generator=gen)
    experts = torch.tensor([[2, 0]] * 5)
    weights = torch.rand(5, 2, generator=gen)
    want = torch.stack(
        [
            sum(weights[n, k] * _swiglu(x[n], *gate_up[e].split(8), down[e]) for k, e in enumerate(row))
            for n, row in enumerate(experts.tolist())
        ]
    )  # fmt: skip
    for backend in ("torch", "grouped_mm", "triton"):
        got = experts_forward(x, weights, experts, gate_up, down, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=backend)


def test_backend_choice_is_layerwise_kernels_and_the_old_names_warn():
    # one dispatcher: the experts take layerwise_kernels' backends; coe_moe's old names delegate
    assert coe_moe.EXPERT_BACKENDS == layerwise_kernels.GROUPED_MM_BACKENDS
    x, gate_up, down = torch.zeros(2, 16), torch.zeros(4, 16, 16), torch.zeros(4, 16, 8)
    with pytest.warns(FutureWarning, match="use `layerwise_kernels.resolve_grouped_mm_backend`"):
        resolve = coe_moe.resolve_expert_backend
    assert resolve is layerwise_kernels.resolve_grouped_mm_backend
    assert resolve("auto", x, gate_up, down) == "grouped_mm"
    assert resolve("auto", x.double(), gate_up.double(), down.double()) == "torch"
    with pytest.warns(FutureWarning, match="use `layerwise_kernels.native_grouped_mm_supports`"):
        assert coe_moe.native_grouped_mm_supports is layerwise_kernels.native_grouped_mm_supports
    with pytest.raises(AttributeError, match="no attribute 'dispatch_tokens'"):
        coe_moe.dispatch_tokens  # noqa: B018


def test_the_layer_runs_the_backend_the_kernels_choose(monkeypatch):
    """An fp32 layer with 16-byte rows runs torch's grouped GEMM for both projections; fp64 the
    loop reference (the grouped matmul calls are recorded)."""
    import coe_moe.chain_of_experts as coe

    ran = []

    def recording(x, weight, offsets, *, backend):
        ran.append(backend)
        return layerwise_kernels.grouped_mm(x, weight, offsets, backend=backend)

    monkeypatch.setattr(coe, "grouped_mm", recording)
    layer = CoELayer(16, 8, num_experts=4, top_k=2, num_iterations=2)
    layer(torch.randn(5, 16))
    assert ran == ["grouped_mm"] * 4  # 2 iterations x (gate/up, down)
    ran.clear()
    layer.double()(torch.randn(5, 16, dtype=torch.float64))
    assert ran == ["torch"] * 4


def test_router_logits_are_returned_per_iteration():
    layer = _layer(num_iterations=3)
    x = torch.randn(2, 4, HIDDEN, dtype=torch.float64)
    out, logits = layer(x, output_router_logits=True)
    assert torch.equal(out, layer(x))
    assert len(logits) == 3 and all(t.shape == (8, EXPERTS) for t in logits)
    # iteration 0 routes the input itself
    torch.testing.assert_close(logits[0], x.reshape(8, HIDDEN) @ layer.routers[0].weight.T)


def test_router_runs_in_fp32_for_half_inputs():
    layer = _layer(dtype=torch.bfloat16, num_iterations=1, std=0.1)
    x = torch.randn(3, HIDDEN).to(torch.bfloat16)
    _, (logits,) = layer(x, output_router_logits=True)
    assert logits.dtype == torch.float32
    want = x.float() @ layer.routers[0].weight.float().T
    torch.testing.assert_close(logits, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 7}, r"top_k must be between 1 and num_experts \(6\), got 7"),
        ({"top_k": 0}, "top_k must be between 1"),
        ({"num_iterations": 0}, r"num_iterations \(C\) must be >= 1, got 0: use 1 for a standard"),
        ({"num_shared_experts": -1}, "num_shared_experts must be >= 0"),
        ({"expert_backend": "cuda"}, "expert_backend must be one of"),
    ],
)
def test_invalid_layers_name_the_fix(kwargs, message):
    args = dict(hidden_size=HIDDEN, moe_intermediate_size=WIDTH, num_experts=EXPERTS, top_k=2)
    with pytest.raises(ValueError, match=message):
        CoELayer(**{**args, **kwargs})
