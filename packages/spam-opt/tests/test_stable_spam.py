"""Stable-SPAM against the spec's equations written out in numpy, step by step, both modes."""

import math

import numpy as np
import pytest
import torch

from spam_opt import StableSPAM, stable_spam_scale

# 11 steps through every branch: AdaClip on a spike at steps 3 and 5 (right after the reset at 4:
# the official code's re-inflated bias correction lets it through), momentum resets at steps 4 and 8,
# the cosine on beta1 passing T_total + 1 = 7 (the official code's scale rises again after it).
HYPER = dict(
    lr=0.05,
    betas=(0.9, 0.99),
    eps=1e-8,
    weight_decay=0.1,
    gamma1=0.7,
    gamma2=0.9,
    gamma3=0.999,
    total_steps=6,
    eta_min=0.5,
    reset_interval=4,
)
STEPS = 11
SPIKES = {3: 40.0, 5: -60.0}


def _gradients(shape, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(1, steps + 1):
        g = rng.standard_normal(shape)
        if c in SPIKES:
            g.flat[0] *= SPIKES[c]
        out.append(g)
    return out


def numpy_stable_spam(p, grads, *, quirks, lr, betas, eps, weight_decay, gamma1, gamma2, gamma3,
                      total_steps, eta_min, reset_interval):  # fmt: skip
    """The spec's Stable-SPAM loop (specs/spam-opt.md), one parameter, float64 numpy.

    quirks=True: the cosine is not clamped, the statistics use the Adam count n_a (restarted by a
    reset) and a reset step still updates with the old moments. Returns the parameter after every
    step, the AdaClip-clipped gradients, the scales and the steps at which AdaClip clipped.
    """
    b1, b2 = betas
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    max_ema = norm_ema = norm_sq_ema = 0.0
    n_a = n = 0
    trajectory, clipped_grads, scales, clipped_steps = [], [], [], []
    for T, g in enumerate(grads, start=1):
        g = g.copy()
        T_c = T if quirks else min(T, total_steps + 1)
        s = eta_min + (1 - eta_min) * (1 + math.cos(math.pi * T_c / (total_steps + 1))) / 2
        p = p * (1 - lr * weight_decay)
        n_a, n = n_a + 1, n + 1
        n_stats = n_a if quirks else n
        gmax = np.abs(g).max()
        max_ema = gamma3 * max_ema + (1 - gamma3) * gmax
        max_hat = max_ema / (1 - gamma3**n_stats)
        spikes = np.abs(g) > max_hat
        g[spikes] = g[spikes] / gmax * max_hat
        if spikes.any():
            clipped_steps.append(T)
        clipped_grads.append(g.copy())
        nu = np.linalg.norm(g)
        b = gamma1 * s
        norm_ema = b * norm_ema + (1 - b) * nu
        norm_sq_ema = gamma2 * norm_sq_ema + (1 - gamma2) * nu**2
        mu_hat = norm_ema / (1 - b**n_stats)
        v_hat = norm_sq_ema / (1 - gamma2**n_stats)
        if nu > 0:
            g = g * mu_hat / (nu * (math.sqrt(v_hat) + eps))
        reset = T % reset_interval == 0
        if reset:
            n_a = 1
            if not quirks:
                m, v = np.zeros_like(p), np.zeros_like(p)
        b1s = b1 * s
        m = b1s * m + (1 - b1s) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr / (1 - b1s**n_a) * m / (np.sqrt(v) / math.sqrt(1 - b2**n_a) + eps)
        if reset and quirks:
            m, v = np.zeros_like(p), np.zeros_like(p)
        trajectory.append(p.copy())
        scales.append(s)
    return trajectory, clipped_grads, scales, clipped_steps


def test_scale_hand_values():
    # T_total = 6: s(0) = 1, s(3.5) would be 0.75, s(7) = eta_min; unclamped, s(14) = 1 again.
    assert stable_spam_scale(0, 6, 0.5) == 1.0
    assert stable_spam_scale(7, 6, 0.5) == pytest.approx(0.5, abs=1e-15)
    assert stable_spam_scale(14, 6, 0.5) == pytest.approx(0.5, abs=1e-15)
    assert stable_spam_scale(14, 6, 0.5, clamp=False) == pytest.approx(1.0, abs=1e-15)
    assert stable_spam_scale(5, None, 0.5) == 1.0


def test_the_spec_scenario_is_exercised():
    p0 = np.array([0.5, -1.0, 2.0, 0.1, -0.3])
    grads = _gradients(5)
    _, _, scales, clean_clips = numpy_stable_spam(p0, grads, quirks=False, **HYPER)
    _, _, quirk_scales, quirk_clips = numpy_stable_spam(p0, grads, quirks=True, **HYPER)
    assert {3, 5} <= set(clean_clips)  # AdaClip catches both spikes...
    # ...the official code misses the one right after a reset
    assert 3 in quirk_clips and 5 not in quirk_clips
    assert scales[8:] == [0.5] * 3 and quirk_scales[8] > quirk_scales[7] > 0.5


@pytest.mark.parametrize("reference_quirks", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_steps_match_numpy(reference_quirks, foreach):
    p0 = np.array([0.5, -1.0, 2.0, 0.1, -0.3])
    grads = _gradients(5)
    want, want_grads, _, _ = numpy_stable_spam(p0, grads, quirks=reference_quirks, **HYPER)
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = StableSPAM([p], reference_quirks=reference_quirks, foreach=foreach, **HYPER)
    for step, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), want[step], rtol=1e-12, atol=1e-12)
        # The official code clips p.grad itself; the default leaves the gradient alone.
        expected_grad = want_grads[step] if reference_quirks else g
        np.testing.assert_allclose(p.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-12)
    state = opt.state[p]
    assert opt.param_groups[0]["global_step"] == STEPS
    assert state["step"].item() == 4 and state["stats_step"].item() == STEPS  # n_a = 1 at T = 8


def test_gamma1_minus_one_means_beta1():
    grads = _gradients(3, steps=5)
    results = []
    for gamma1 in (-1, 0.8):
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        opt = StableSPAM([p], betas=(0.8, 0.999), gamma1=gamma1)
        for g in grads:
            p.grad = torch.tensor(g)
            opt.step()
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


def test_zero_gradient_leaves_adagn_out():
    # nu = 0: AdaGN must not divide by it (the update is zero, weight decay still applies).
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = StableSPAM([p], weight_decay=0.5, lr=0.1)
    p.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -0.95], dtype=torch.float64))


def test_bf16_parameters_keep_fp32_statistics():
    p = torch.nn.Parameter(torch.randn(4, 4).bfloat16())
    opt = StableSPAM([p])
    p.grad = torch.randn(4, 4).bfloat16()
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.bfloat16
    assert all(state[k].dtype == torch.float32 for k in ("clip_max_ema", "norm_ema", "norm_sq_ema"))
    quirky = StableSPAM([p], reference_quirks=True)
    quirky.step()
    assert quirky.state[p]["norm_ema"].dtype == torch.bfloat16  # as the official code


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=-1.0), "learning rate"),
        (dict(gamma1=1.5), "gamma1"),
        (dict(gamma2=1.0), "gamma2"),
        (dict(gamma3=-0.1), "gamma3"),
        (dict(total_steps=0), "total_steps"),
        (dict(eta_min=1.5), "eta_min"),
        (dict(reset_interval=-5), "reset_interval"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StableSPAM([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_sparse_and_complex_gradients_get_a_clear_error():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="StableSPAM does not support sparse gradients"):
        StableSPAM(emb.parameters()).step()
    z = torch.nn.Parameter(torch.ones(3, dtype=torch.complex128))
    z.grad = torch.ones(3, dtype=torch.complex128)
    with pytest.raises(RuntimeError, match="complex parameters"):
        StableSPAM([z]).step()


def test_gradient_accumulation_sees_the_summed_gradient():
    # Two backward passes accumulate into p.grad; the step must equal one step on the sum, and (by
    # default) leave p.grad as it found it.
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    w0 = torch.randn(3, dtype=torch.float64)
    accumulated = torch.nn.Parameter(w0.clone())
    opt_a = StableSPAM([accumulated], lr=0.1)
    (x1 @ accumulated).pow(2).sum().backward()
    (x2 @ accumulated).pow(2).sum().backward()
    grad_before = accumulated.grad.clone()
    opt_a.step()
    assert torch.equal(accumulated.grad, grad_before)
    single = torch.nn.Parameter(w0.clone())
    opt_b = StableSPAM([single], lr=0.1)
    ((x1 @ single).pow(2).sum() + (x2 @ single).pow(2).sum()).backward()
    opt_b.step()
    torch.testing.assert_close(accumulated.detach(), single.detach(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("global_step", [3, 4])
def test_functional_global_step_counts_the_updates_before_this_one(global_step):
    # As in SPAM: reset_interval 5 resets on the 5th update, the one with four completed before it
    # (the Adam count restarts at 1 there); the cosine is taken at t = global_step + 1.
    from spam_opt.stable_spam import stable_spam

    p = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    moments = [
        torch.full((3,), 0.3, dtype=torch.float64),
        torch.full((3,), 0.2, dtype=torch.float64),
    ]
    stats = [torch.tensor(0.0, dtype=torch.float64) for _ in range(3)]
    steps = [torch.tensor(7.0), torch.tensor(7.0)]
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, gamma1=0.7)
    hyper.update(gamma2=0.9, gamma3=0.999, total_steps=8, eta_min=0.5, reset_interval=5)
    lists = [[t] for t in (*moments, *stats, *steps)]  # one parameter
    stable_spam([p], [g], *lists, global_step=global_step, reference_quirks=False, **hyper)
    assert steps[0].item() == (1 if global_step == 4 else 8) and steps[1].item() == 8
    # the first moment's coefficient b1 s(t) with t = global_step + 1, read back from m
    s = stable_spam_scale(global_step + 1, 8, 0.5)
    b1s = 0.9 * s
    m0 = 0.0 if global_step == 4 else 0.3
    g_used = (moments[0] - b1s * m0) / (1 - b1s)
    # AdaGN rescaled g as a whole: g_used is parallel to g (it is not when s is off by a step)
    torch.testing.assert_close(g_used / g_used[0], g / g[0], rtol=1e-12, atol=1e-12)
