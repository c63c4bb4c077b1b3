"""SPAM against the spec's equations written out in numpy, step by step, and against hand values."""

import math

import numpy as np
import pytest
import torch

from spam_opt import SPAM, spam_warmup_scale

# A small problem that passes through every branch in 14 steps: clipping from step A = 2, a spike at
# steps 4 and 9, momentum resets at steps 6 and 12 (no clipping there or right after), the cosine
# warm-up after each reset (N = 3), decoupled weight decay.
HYPER = dict(
    lr=0.05,
    betas=(0.9, 0.99),
    eps=1e-8,
    weight_decay=0.1,
    warmup_steps=3,
    threshold=4.0,
    reset_interval=6,
    clip_delay=2,
)
STEPS = 14
SPIKES = {4: 50.0, 9: -80.0}  # step -> factor on entry 0


def _gradients(shape, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(1, steps + 1):
        g = rng.standard_normal(shape)
        if c in SPIKES:
            g.flat[0] *= SPIKES[c]
        out.append(g)
    return out


def numpy_spam(p, grads, masks=None, *, quirks=False, lr, betas, eps, weight_decay, warmup_steps,
               threshold, reset_interval, clip_delay):  # fmt: skip
    """The spec's SPAM loop (specs/spam-opt.md), one parameter, in float64 numpy.

    Returns the parameter after every step, the gradient after clipping, the warm-up scales and the
    steps at which something was clipped. `masks[c - 1]` is the sparse-momentum mask of step c.
    """
    b1, b2, N, theta, dT, A = *betas, warmup_steps, threshold, reset_interval, clip_delay
    p = p.copy()
    t, k = 0, N + 1
    sel = np.ones(p.shape, bool) if masks is None else masks[0]
    m, v = np.zeros(sel.sum()), np.zeros(sel.sum())
    trajectory, clipped_grads, scales, clipped_steps = [], [], [], []
    for step, full_g in enumerate(grads):
        if masks is not None and not np.array_equal(masks[step], sel):
            sel = masks[step]  # a redrawn mask; the reset of this step zeroes the moments anyway
            m, v = np.zeros(sel.sum()), np.zeros(sel.sum())
        s = 1 - 0.99 * (1 + math.cos(math.pi * k / (N + 1))) / 2 if k < N else 1.0
        c = t + 1
        if c % dT == 0:
            m[:], v[:] = 0.0, 0.0
        n = c  # the Adam count: every step has a gradient here, and it is never reset
        g = full_g[sel].copy()
        if theta != 0 and c >= A and c % dT >= A:
            spike = g**2 > theta * v
            g[spike] = np.sign(g[spike]) * np.sqrt(theta * v[spike])
            if spike.any():
                clipped_steps.append(c)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        q = p[sel] - lr * s * math.sqrt(1 - b2**n) / (1 - b1**n) * m / (np.sqrt(v) + eps)
        if weight_decay > 0 and not (quirks and masks is not None):
            q = q - lr * weight_decay * q
        p[sel] = q
        t, k = t + 1, k + 1
        if (t + 1) % dT == 0:
            k = 0
        full_clipped = full_g.copy()
        full_clipped[sel] = g
        trajectory.append(p.copy())
        clipped_grads.append(full_clipped)
        scales.append(s)
    return trajectory, clipped_grads, scales, clipped_steps


def test_warmup_scale_hand_values():
    # s(0) = 1 - 0.99 (1 + cos 0) / 2 = 0.01; s(2) = 1 - 0.99 (1 + cos(pi/2)) / 2 = 0.505 for N = 3.
    assert spam_warmup_scale(0, 3) == pytest.approx(0.01, abs=1e-15)
    assert spam_warmup_scale(2, 3) == pytest.approx(0.505, abs=1e-15)
    assert spam_warmup_scale(3, 3) == 1.0 and spam_warmup_scale(4, 3) == 1.0
    assert spam_warmup_scale(0, 0) == 1.0  # N = 0: no warm-up at all


def test_first_step_moves_by_lr_against_the_gradient_sign():
    # n = 1, s = 1, eps = 0: m = 0.1 g, v = 0.001 g^2, update = lr sqrt(0.001)/0.1 * 0.1 g / sqrt(0.001 g^2)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = SPAM([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([3.0, -0.25, 1e-3], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 0.4], dtype=torch.float64))


def test_the_spec_scenario_is_exercised():
    p0 = np.array([0.5, -1.0, 2.0, 0.1])
    _, _, scales, clipped_steps = numpy_spam(p0, _gradients(4), **HYPER)
    assert {4, 9} <= set(clipped_steps) and not {1, 6, 7, 12, 13} & set(clipped_steps)
    assert scales[5] == pytest.approx(0.01) and scales[11] == pytest.approx(0.01)  # reset steps
    assert 0.01 < scales[6] < scales[7] < 1.0 and scales[8] == 1.0  # the warm-up after the reset


@pytest.mark.parametrize("reference_quirks", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_dense_steps_match_numpy(reference_quirks, foreach):
    p0 = np.array([0.5, -1.0, 2.0, 0.1])
    grads = _gradients(4)
    want, want_grads, _, _ = numpy_spam(p0, grads, quirks=reference_quirks, **HYPER)
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = SPAM([p], reference_quirks=reference_quirks, foreach=foreach, **HYPER)
    for step, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), want[step], rtol=1e-12, atol=1e-12)
        # The official code clips p.grad itself; the default leaves the gradient alone.
        expected_grad = want_grads[step] if reference_quirks else g
        np.testing.assert_allclose(p.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["global_step"] == STEPS
    assert opt.state[p]["step"].item() == STEPS  # n is never reset


@pytest.mark.parametrize("reference_quirks", [False, True])
def test_sparse_momentum_matches_numpy(reference_quirks):
    torch.manual_seed(0)
    p0 = np.random.default_rng(1).standard_normal((4, 5))
    grads = _gradients((4, 5), seed=2)
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = SPAM([{"params": [p], "density": 0.5}], reference_quirks=reference_quirks, **HYPER)
    masks = []
    opt.register_step_pre_hook(lambda o, args, kwargs: masks.append(o.state[p]["mask"].clone()))
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        mask = masks[-1]
        if reference_quirks:
            # the update, scaled by s, scattered into p.grad; zero outside the mask
            assert torch.all(p.grad[~mask] == 0)
        else:
            assert torch.equal(p.grad, torch.tensor(g))
    assert all(m.sum() == 10 for m in masks[:5])  # exactly density * numel before the first redraw
    assert not torch.equal(masks[4], masks[5])  # redrawn before the reset step 6
    want, _, _, _ = numpy_spam(
        p0, grads, [m.numpy() for m in masks], quirks=reference_quirks, **HYPER
    )
    np.testing.assert_allclose(p.detach().numpy(), want[-1], rtol=1e-12, atol=1e-12)
    # Entries outside every mask never move (weight decay, too, acts on the masked entries only).
    frozen = ~np.logical_or.reduce([m.numpy() for m in masks])
    if frozen.any():
        np.testing.assert_array_equal(p.detach().numpy()[frozen], p0[frozen])


def test_density_moments_live_on_the_mask_only():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = SPAM([{"params": [p], "density": 0.25}])
    p.grad = torch.randn(8, 8)
    opt.step()
    assert opt.state[p]["exp_avg"].shape == (16,) and opt.state[p]["mask"].dtype == torch.bool


def test_frozen_parameters_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = SPAM([a, b])
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and len(opt.state[b]) == 0
    assert opt.state[a]["step"].item() == 1


def test_closure_and_zero_grad_behave_like_torch():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = SPAM([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert p.grad is not None
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=-1.0), "learning rate"),
        (dict(betas=(1.0, 0.9)), "beta parameter at index 0"),
        (dict(betas=(0.9, -0.1)), "beta parameter at index 1"),
        (dict(eps=-1e-8), "epsilon"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(warmup_steps=1.5), "warmup_steps"),
        (dict(reset_interval=-1), "reset_interval"),
        (dict(threshold=-1.0), "threshold"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SPAM([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_invalid_density_names_the_range():
    with pytest.raises(ValueError, match="0 < density <= 1"):
        SPAM([{"params": [torch.nn.Parameter(torch.ones(2, 2))], "density": 0.0}])
    opt = SPAM([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="0 < density <= 1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 2))], "density": 1.5})
    assert len(opt.param_groups) == 1  # a rejected group is not half-added


def test_a_group_added_later_joins_the_schedule():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = SPAM([a], warmup_steps=2, reset_interval=4)
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    opt.add_param_group({"params": [b], "lr": 0.1})
    assert opt.param_groups[1]["global_step"] == 3 and opt.param_groups[1]["warmup_step"] == 0


def test_sparse_and_complex_gradients_get_a_clear_error():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients.*sparse=False"):
        SPAM(emb.parameters()).step()
    z = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    z.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex parameters.*view_as_real"):
        SPAM([z]).step()


def test_fused_and_foreach_together_are_rejected():
    with pytest.raises(RuntimeError, match="cannot both be True"):
        SPAM([torch.nn.Parameter(torch.ones(2))], foreach=True, fused=True)


def test_no_reset_interval_never_resets_or_warms_up():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = SPAM([p], reset_interval=0, warmup_steps=2, clip_delay=2)
    grads = [np.array([g]) for g in (1.0, -2.0, 30.0, 0.5)]
    hyper = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, warmup_steps=2)
    hyper.update(threshold=5000.0, reset_interval=10**9, clip_delay=2)  # 10**9: "never" in numpy
    want, _, scales, clipped_steps = numpy_spam(np.array([1.0]), grads, **hyper)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    assert scales == [1.0] * 4 and clipped_steps == [3]
    np.testing.assert_allclose(p.detach().numpy(), want[-1], rtol=1e-12)


def test_clip_delay_below_two_is_rejected():
    # With v = 0 every entry of the first gradient would be clipped to 0, and v would stay 0.
    with pytest.raises(ValueError, match="clip_delay"):
        SPAM([torch.nn.Parameter(torch.ones(2))], clip_delay=1)
    SPAM([torch.nn.Parameter(torch.ones(2))], clip_delay=0, threshold=0.0)  # no spike test at all


@pytest.mark.parametrize("global_step", [3, 4])
def test_functional_global_step_counts_the_updates_before_this_one(global_step):
    # reset_interval 5: the 5th update (global_step = 4, four completed before it) zeroes m and v
    # first, so m = (1 - b1) g; the 4th (global_step = 3) keeps them, m = b1 m + (1 - b1) g.
    from spam_opt.spam import spam

    p = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    m = torch.full((3,), 0.3, dtype=torch.float64)
    v = torch.full((3,), 0.2, dtype=torch.float64)
    step = torch.tensor(7.0)
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, warmup_steps=0)
    hyper.update(threshold=0.0, reset_interval=5, clip_delay=0, reference_quirks=False)
    spam([p], [g], [m], [v], [step], global_step=global_step, warmup_step=0, **hyper)
    before = 0.0 if global_step == 4 else 0.3
    torch.testing.assert_close(m, 0.9 * before + 0.1 * g, rtol=1e-15, atol=1e-15)
    assert step.item() == 8  # the Adam count is never reset
