"""ELASFFN: out = Down(S(relu(Up(x))^2)), its STE / masked backward, warm-up state, stats, memory.

References are written out here: a dense FFN with explicit weights, a top-2 mask from torch.topk on
tie-free inputs (independent of the selector's tie rule), and the backward formulas by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sparse_ft import ELASFFN, LowRankLinear, elas_stats, set_elas_step
from sparse_ft.elas_ffn import (
    Relu2Sparse24Matmul,
    analytic_saved_bytes,
    relu2_sparse24_matmul,
    saved_activation_bytes,
)

D, FFN, R = 8, 16, 4


def _ffn(rank=R, *, dtype=torch.float64, seed=0, **kw) -> ELASFFN:
    torch.manual_seed(seed)
    return ELASFFN(D, FFN, rank, dtype=dtype, **kw)


def _top2_mask(y2: torch.Tensor) -> torch.Tensor:
    """Top-2 of every 4 by torch.topk: the selector's result wherever there are no ties."""
    groups = y2.reshape(*y2.shape[:-1], -1, 4)
    idx = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(y2.shape)


def _factors(m: ELASFFN):
    """(W_up [F, d], A_dn, B_dn) of a low-rank ELASFFN."""
    return m.up_proj.merged_weight(), m.down_proj.weight_in, m.down_proj.weight_out


def _x(*shape, dtype=torch.float64, seed=1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(*shape, D, dtype=dtype)


def _dense_groups_input(m: ELASFFN, tokens: int = 6) -> torch.Tensor:
    """x for which every token has groups with 3-4 positive y1 entries (S really drops mass)."""
    x = _x(tokens)
    with torch.no_grad():
        y1 = m.up_proj(x)
        assert ((y1.reshape(tokens, -1, 4) > 0).sum(-1) > 2).any()
    return x


# --- construction and the warm-up state ---------------------------------------------------------


def test_ffn_dim_must_be_a_multiple_of_4_and_modes_are_checked():
    with pytest.raises(ValueError, match="multiple of 4.*use 64"):
        ELASFFN(D, 18)
    with pytest.raises(ValueError, match="grad must be one of"):
        ELASFFN(D, FFN, grad="dense")
    with pytest.raises(ValueError, match="backend must be one of"):
        ELASFFN(D, FFN, backend="cuda")
    assert isinstance(ELASFFN(D, FFN, 2).up_proj, LowRankLinear)
    assert isinstance(ELASFFN(D, FFN).down_proj, nn.Linear)


def test_warmup_switches_at_exactly_warmup_steps_and_survives_state_dict():
    m = _ffn(warmup_steps=3)
    x = _dense_groups_input(m)
    w_up, a_dn, b_dn = _factors(m)
    y2 = torch.relu(x @ w_up.T) ** 2
    dense = y2 @ a_dn @ b_dn.T
    sparse = (y2 * _top2_mask(y2)) @ a_dn @ b_dn.T
    assert not torch.allclose(dense, sparse)

    model = nn.Sequential(m)
    assert int(m.elas_step) == 0 and not m.sparse_active
    assert set_elas_step(model, 2) == 1
    torch.testing.assert_close(model(x), dense, rtol=1e-12, atol=1e-12)
    set_elas_step(model, 3)
    assert m.sparse_active and int(m.elas_step) == 3
    torch.testing.assert_close(model(x), sparse, rtol=1e-12, atol=1e-12)

    fresh = nn.Sequential(_ffn(warmup_steps=3, seed=5))
    assert not fresh[0].sparse_active
    fresh.load_state_dict(model.state_dict())
    assert "0.elas_step" in model.state_dict()
    assert int(fresh[0].elas_step) == 3 and fresh[0].sparse_active
    torch.testing.assert_close(fresh(x), sparse, rtol=1e-12, atol=1e-12)
    # back before the switch (e.g. an earlier checkpoint): dense again
    fresh[0].load_state_dict({**m.state_dict(), "elas_step": torch.tensor(2)})
    assert not fresh[0].sparse_active
    torch.testing.assert_close(fresh(x), dense, rtol=1e-12, atol=1e-12)


def test_sparse_false_never_switches_and_zero_warmup_starts_sparse():
    off = _ffn(sparse=False, warmup_steps=0)
    set_elas_step(off, 10**6)
    assert not off.sparse_active
    assert _ffn(warmup_steps=0).sparse_active
    on = _ffn(warmup_steps=5)
    on.warmup_steps = 0
    assert on.sparse_active


# --- forward ------------------------------------------------------------------------------------


def test_full_rank_low_rank_dense_ffn_equals_dense_ffn_of_merged_weights():
    low = _ffn(rank=D, sparse=False)  # rank = min(d, F): the factors span every W
    full = ELASFFN(D, FFN, None, sparse=False, dtype=torch.float64)
    with torch.no_grad():
        full.up_proj.weight.copy_(low.up_proj.weight_out @ low.up_proj.weight_in.T)
        full.down_proj.weight.copy_(low.down_proj.weight_out @ low.down_proj.weight_in.T)
    x = _x(2, 5)
    want = torch.relu(x @ full.up_proj.weight.T) ** 2 @ full.down_proj.weight.T
    torch.testing.assert_close(low(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full(x), want, rtol=1e-12, atol=1e-12)
    # and with S active the two parameterisations still agree
    set_elas_step(low, low.warmup_steps)
    set_elas_step(full, full.warmup_steps)
    torch.testing.assert_close(low(x), full(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", ["ste", "masked"])
@pytest.mark.parametrize("lead", [(7,), (2, 3), (2, 1, 3)])
def test_sparse_forward_equals_dense_forward_with_explicit_mask(grad, lead):
    m = _ffn(warmup_steps=0, grad=grad)
    x = _x(*lead)
    w_up, a_dn, b_dn = _factors(m)
    y2 = torch.relu(x @ w_up.T) ** 2
    want = (y2 * _top2_mask(y2)) @ a_dn @ b_dn.T
    got = m(x)
    assert got.shape == (*lead, D)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", ["ste", "masked"])
def test_inference_forward_equals_the_training_forward_bitwise(grad):
    m = _ffn(warmup_steps=0, grad=grad, dtype=torch.float32)
    m.collect_stats = True
    x = _x(2, 5, dtype=torch.float32)
    train = m(x)
    st_train = elas_stats(m)[""]
    with torch.no_grad():
        infer = m(x)
    st_infer = elas_stats(m)[""]
    assert train.requires_grad and not infer.requires_grad
    assert torch.equal(train, infer)
    assert int(st_train.count) == 2 * 5 * FFN
    assert all(torch.equal(a, b) for a, b in zip(st_train, st_infer, strict=True))


# --- backward -----------------------------------------------------------------------------------


def _grads_through_y1(m: ELASFFN, x: torch.Tensor, g_out: torch.Tensor):
    """(y1, dL/dy1) of L = <m(x), g_out>, y1 captured at the up projection."""
    seen = {}

    def keep(_mod, _inp, out):
        out.retain_grad()
        seen["y1"] = out

    handle = m.up_proj.register_forward_hook(keep)
    (m(x) * g_out).sum().backward()
    handle.remove()
    return seen["y1"], seen["y1"].grad


def test_ste_grad_is_straight_through_and_masked_grad_is_that_times_m():
    ste, masked = _ffn(warmup_steps=0, grad="ste"), _ffn(warmup_steps=0, grad="masked")
    x = _dense_groups_input(ste)
    torch.manual_seed(2)
    g_out = torch.randn(x.shape[0], D, dtype=torch.float64)
    _, a_dn, b_dn = _factors(ste)
    g_y2 = (g_out @ b_dn @ a_dn.T).detach()  # dL/ds = g_out B_dn A_dn^T

    y1, g_y1 = _grads_through_y1(ste, x, g_out)
    relu_y1 = torch.relu(y1.detach())
    mask = _top2_mask(relu_y1**2)
    torch.testing.assert_close(g_y1, 2 * g_y2 * relu_y1, rtol=1e-12, atol=1e-12)
    pos = relu_y1 > 0  # there dL/dy2 = dL/dy1 / (2 relu(y1)): the STE passes g_s unchanged
    torch.testing.assert_close(g_y1[pos] / (2 * relu_y1[pos]), g_y2[pos], rtol=1e-10, atol=0)

    _, g_y1_masked = _grads_through_y1(masked, x, g_out)
    torch.testing.assert_close(g_y1_masked, 2 * g_y2 * mask * relu_y1, rtol=1e-12, atol=1e-12)
    dropped = ~mask & pos  # the modes differ exactly on dropped positive slots
    assert dropped.any() and (g_y1[dropped] != 0).all() and (g_y1_masked[dropped] == 0).all()


@pytest.mark.parametrize("rank", [R, None])
@pytest.mark.parametrize("grad", ["ste", "masked"])
def test_down_weight_gradient_uses_sparse_s_not_dense_y2(grad, rank):
    m = _ffn(rank=rank, warmup_steps=0, grad=grad)
    x = _dense_groups_input(m)
    torch.manual_seed(3)
    g_out = torch.randn(x.shape[0], D, dtype=torch.float64)
    (m(x) * g_out).sum().backward()
    with torch.no_grad():
        y2 = torch.relu(m.up_proj(x)) ** 2
        s = y2 * _top2_mask(y2)
        if rank is None:  # Down = W_dn [d, F]: dL/dW_dn = g_out^T s
            got, want, bug = m.down_proj.weight.grad, g_out.T @ s, g_out.T @ y2
        else:  # dL/dA_dn = s^T (g_out B_dn)
            g_h2 = g_out @ m.down_proj.weight_out
            got, want, bug = m.down_proj.weight_in.grad, s.T @ g_h2, y2.T @ g_h2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got - bug).abs().max() > 1e-3 * bug.abs().max()  # the dev repo's y2 would fail here


def test_ste_recomputed_s_is_bitwise_the_forward_s():
    """STE saves y1 only; its weight gradient (from s recomputed in backward) equals the masked
    mode's (from the compact s saved in forward) and s_fwd^T g bit for bit, in fp32."""
    torch.manual_seed(4)
    y1 = torch.randn(33, FFN)
    w = torch.randn(FFN, R)
    g = torch.randn(33, R)
    s_fwd = torch.relu(y1) ** 2 * _top2_mask(torch.relu(y1) ** 2)
    grads = []
    for grad in ("ste", "masked"):
        wr = w.clone().requires_grad_()
        h2, _ = relu2_sparse24_matmul(y1.clone().requires_grad_(), wr, grad=grad)
        torch.testing.assert_close(h2, s_fwd @ w, rtol=0, atol=0)
        h2.backward(g)
        grads.append(wr.grad)
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(grads[0], s_fwd.T @ g)


def _tie_free_y1(rows: int, f: int, seed: int = 0) -> torch.Tensor:
    """fp64 y1 whose |relu(y1)^2| within a group differ by > 1e-2 and never sit near 0: a
    finite-difference step of 1e-6 cannot change the mask."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randperm(rows * f, generator=gen).double().reshape(rows, f) / (rows * f)
    sign = torch.where(torch.rand(rows, f, generator=gen) < 0.25, -1.0, 1.0).double()
    return (sign * (0.2 + base)).requires_grad_()


def test_masked_mode_passes_gradcheck_in_fp64():
    y1 = _tie_free_y1(5, 12)
    w = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: Relu2Sparse24Matmul.apply(a, b, "masked", "torch", False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y1, w), eps=1e-6, atol=1e-8)
    # the STE is a surrogate, not the derivative of the sparse forward: gradcheck must reject it
    ste = lambda a, b: Relu2Sparse24Matmul.apply(a, b, "ste", "torch", False)  # noqa: E731
    assert not torch.autograd.gradcheck(ste, (y1, w), eps=1e-6, atol=1e-8, raise_exception=False)
    # through the whole module (x and every factor), inputs far from any tie
    m = _ffn(warmup_steps=0, grad="masked")
    x = _x(3).requires_grad_()
    with torch.no_grad():
        groups = (torch.relu(m.up_proj(x)) ** 2).reshape(3, -1, 4).sort(-1).values
        # the kept pair is separated from the dropped pair (or all tied at 0, which changes nothing)
        assert ((groups[..., 2] - groups[..., 1] > 1e-4) | (groups[..., 2] == 0)).all()
    params = (x, *m.parameters())
    names = [n for n, _ in m.named_parameters()]

    def call(*args):
        return torch.func.functional_call(m, dict(zip(names, args[1:])), (args[0],))

    assert torch.autograd.gradcheck(call, params, eps=1e-6, atol=1e-7)


# --- statistics ---------------------------------------------------------------------------------


def _hand_y1() -> torch.Tensor:
    """Two tokens, F = 8; relu^2 per group by hand below."""
    return torch.tensor(
        [
            [3.0, -1.0, 2.0, 1.0, 0.0, 0.0, -2.0, 0.5],  # (9,0,4,1) -> drop 1 | (0,0,0,.25)
            [1.0, 1.0, 1.0, -4.0, 2.0, 3.0, 1.0, 1.0],  # (1,1,1,0) -> drop 1 | (4,9,1,1) -> 2
        ]
    )


@pytest.mark.parametrize("step", [0, 1])
def test_stats_equal_hand_counts_during_warmup_and_after(step):
    m = ELASFFN(2, 8, 1, warmup_steps=1)
    set_elas_step(m, step)
    m.collect_stats = True
    x = torch.randn(2, 2)
    handle = m.up_proj.register_forward_hook(lambda *_: _hand_y1())
    m(x)
    m(x)  # sums over forwards
    handle.remove()
    stats = elas_stats(nn.ModuleDict({"mlp": m}))
    st = stats["mlp"]
    # before: 9,4,1,.25 | 1,1,1,4,9,1,1 = 11 non-zeros, mass 14.25 + 18 = 32.25
    # after: 9,4,.25 | 1,1,9,4 = 7 non-zeros, mass 13.25 + 15 = 28.25
    assert int(st.count) == 32 and int(st.nonzero_before) == 22 and int(st.nonzero_after) == 14
    assert float(st.mass_before) == 64.5 and float(st.mass_after) == 56.5
    assert float(st.activation_sparsity) == pytest.approx(1 - 11 / 16)
    assert float(st.dropped_mass_fraction) == pytest.approx(4 / 32.25)
    assert elas_stats(m) == {}  # reset by the first read


def test_stats_off_by_default_and_checkpoint_recompute_is_not_counted_twice():
    m = _ffn(warmup_steps=0)
    x = _x(4).requires_grad_()
    m(x).sum().backward()
    assert elas_stats(m) == {}
    m.collect_stats = True
    x.grad = None
    m(x).sum().backward()
    once = elas_stats(m)[""]
    grad_plain = x.grad.clone()
    x.grad = None
    checkpoint(m, x, use_reentrant=False).sum().backward()
    twice = elas_stats(m)[""]
    assert int(twice.count) == int(once.count) == 4 * FFN
    torch.testing.assert_close(x.grad, grad_plain, rtol=0, atol=0)


# --- memory and numerics ------------------------------------------------------------------------


def test_analytic_saved_bytes_by_hand_at_1b_shapes():
    """d 2048, F 8192, r 512, bf16: 2(d + 2r) = 6144 outer bytes; middle 4F, 2F, F + F/4."""
    counts = {
        mode: analytic_saved_bytes(mode, 2048, 8192, 512, 2) for mode in ("dense", "ste", "masked")
    }
    assert counts == {"dense": 38912, "ste": 22528, "masked": 16384}
    assert counts["masked"] / counts["dense"] <= 0.45  # ELAS spec §3.6 target 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [R, None])
@pytest.mark.parametrize("mode", ["dense", "ste", "masked"])
def test_saved_tensor_bytes_equal_the_analytic_count(mode, rank, dtype):
    m = ELASFFN(D, FFN, rank, sparse=mode != "dense", warmup_steps=0, dtype=dtype)
    if mode != "dense":
        m.grad = mode
    tokens = 2 * 5
    x = torch.randn(2, 5, D, dtype=dtype, requires_grad=True)
    e = torch.finfo(dtype).bits // 8
    assert saved_activation_bytes(m, x) == tokens * analytic_saved_bytes(mode, D, FFN, rank, e)


def test_bf16_uses_fp32_math_inside_and_tracks_an_fp64_reference():
    """|y1| > 256: relu^2 overflows fp16 but not the fp32 math; the backward's elementwise product
    2 g_s relu(y1) is formed in fp32 and rounded once."""
    torch.manual_seed(6)
    y1 = (torch.randn(6, FFN) * 300).bfloat16().requires_grad_()
    w = torch.randn(FFN, R)  # fp32 master weight beside bf16 activations (as under autocast)
    g = torch.randn(6, R).bfloat16()
    for grad in ("ste", "masked"):
        y = y1.detach().clone().requires_grad_()
        wr = w.clone().requires_grad_()
        h2, _ = relu2_sparse24_matmul(y, wr, grad=grad)
        assert h2.dtype == torch.bfloat16 and torch.isfinite(h2).all()
        h2.backward(g)
        assert wr.grad.dtype == torch.float32 and y.grad.dtype == torch.bfloat16
        v = torch.relu(y1.detach().double()) ** 2
        mask = _top2_mask(v)
        s = (v * mask).bfloat16()
        g_s = g @ w.bfloat16().T
        keep = mask if grad == "masked" else torch.ones_like(mask)
        want = (2 * g_s.float() * torch.relu(y1.detach().float()) * keep).bfloat16()
        assert torch.equal(y.grad, want)
        ref = (v * mask) @ w.double()
        torch.testing.assert_close(h2.double(), ref, rtol=2e-2, atol=1e-2 * ref.abs().max())
        torch.testing.assert_close(wr.grad, (s.T @ g).float(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", ["ste", "masked"])
def test_triton_backend_matches_torch_backend_bitwise_in_fp32(grad):
    pytest.importorskip("triton")
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        m = ELASFFN(D, FFN, R, warmup_steps=0, grad=grad, backend=backend)
        x = _x(3, dtype=torch.float32).requires_grad_()
        out = m(x)
        out.sum().backward()
        results.append((out, x.grad, *[p.grad for p in m.parameters()]))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_autocast_style_fp32_weights_with_bf16_activation_module():
    m = ELASFFN(D, FFN, R, warmup_steps=0)
    x = torch.randn(4, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    with torch.no_grad():
        ref = m.__class__(D, FFN, R, warmup_steps=0)
        ref.load_state_dict(m.state_dict())
        want = ref(x)
    torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=5e-2 * want.abs().max())
