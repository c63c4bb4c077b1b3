"""Stable-SPAM: Adam with adaptive spike clipping (AdaClip), adaptive gradient-norm scaling (AdaGN)
and momentum reset (MoRet).

Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv:2502.17055 (2025). The update rule is stated once, in the docstring of the functional step
`stable_spam` below; the optimizer `StableSPAM` keeps the state and the global step and calls it, as
`torch.optim.Adam` calls `torch.optim.adam.adam`. AdaClip's max|g| and AdaGN's ||g|| are those of the
full gradient: for FSDP2 shards the local statistics are all-reduced over the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from layerwise_core import all_reduce_max, all_reduce_sum, is_dtensor, local_tensor
from spam_opt._optimizer import (
    all_reduce_per_tensor,
    check_adam_hyperparameters,
    choose_path,
    group_by_device_and_dtype,
    init_group,
    restore_state_dtypes,
    slices,
)

__all__ = ["StableSPAM", "stable_spam", "stable_spam_scale"]


def stable_spam_scale(
    step: int, total_steps: int | None, eta_min: float, *, clamp: bool = True
) -> float:
    """The cosine multiplier of b1 (and of AdaGN's g1) at update t = `step` (Stable-SPAM, Sec. 4).

        s(t) = eta_min + (1 - eta_min) * (1 + cos(pi * t / (T_total + 1))) / 2,   1 if T_total is None

    the closed form of the official code's `CosineAnnealingLR(T_max=T_total + 1)` on 1.0, with the same
    rounding. With `clamp`, t stops at T_total + 1 (s stays at eta_min); the official code does not
    clamp, so s rises again after T_total + 1.
    """
    if total_steps is None:
        return 1.0
    if clamp:
        step = min(step, total_steps + 1)
    return eta_min + (1.0 - eta_min) * (1 + math.cos(math.pi * step / (total_steps + 1))) / 2


def stable_spam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    clip_max_emas: list[torch.Tensor],
    norm_emas: list[torch.Tensor],
    norm_sq_emas: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    stats_steps: list[torch.Tensor],
    *,
    global_step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    total_steps: int | None,
    eta_min: float,
    reset_interval: int,
    reference_quirks: bool,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    r"""One Stable-SPAM update (Huang et al. 2025) of lists of tensors, in place.

    With t = global_step + 1 (this update; global_step counts the updates before it), per
    parameter n_a = state_steps[i] + 1 (the Adam count, restarted at 1 by a reset) and
    n = stats_steps[i] + 1 (the count of the AdaClip / AdaGN statistics, never reset),
    T_total = total_steps, dT = reset_interval and g1 = gamma1 (-1: b1)::

        s   = eta_min + (1 - eta_min)(1 + cos(pi min(t, T_total + 1) / (T_total + 1))) / 2
                                                          (1 if T_total is None)
        p   = p (1 - lr wd)
        M   = g3 M + (1 - g3) max|g| ;  Mh = M / (1 - g3^n)                      # AdaClip
        g   = g Mh / max|g|                               where |g| > Mh
        nu  = ||g|| ;  b = g1 s ;  mu = b mu + (1 - b) nu ;  V = g2 V + (1 - g2) nu^2  # AdaGN
        g   = g (mu / (1 - b^n)) / (nu (sqrt(V / (1 - g2^n)) + eps))             if nu > 0
        m, v, n_a = 0, 0, 1                               if dT > 0 and t % dT == 0  # MoRet
        m   = b1 s m + (1 - b1 s) g ;  v = b2 v + (1 - b2) g^2
        p   = p - lr / (1 - (b1 s)^n_a) m / (sqrt(v) / sqrt(1 - b2^n_a) + eps)

    M, mu, V are clip_max_emas, norm_emas, norm_sq_emas. max|g| and ||g|| are all-reduced over the
    mesh for DTensor shards. With `reference_quirks` the official code is followed instead: the
    cosine is not clamped, n is n_a (so a reset restarts the statistics' bias corrections), a reset
    update still uses the old m, v (zeroed after it), and the clipped gradient is written into
    p.grad. state_steps and stats_steps are incremented here; the caller advances global_step.
    """
    t = global_step + 1
    hyper = dict(
        scale=stable_spam_scale(t, total_steps, eta_min, clamp=not reference_quirks),
        reset=reset_interval > 0 and t % reset_interval == 0,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        gamma1=beta1 if gamma1 == -1 else gamma1,
        gamma2=gamma2,
        gamma3=gamma3,
        reference_quirks=reference_quirks,
    )
    lists = (params, grads, exp_avgs, exp_avg_sqs, clip_max_emas, norm_emas, norm_sq_emas)
    lists += (state_steps, stats_steps)
    for idx in group_by_device_and_dtype(params).values():
        sub = [[x[i] for i in idx] for x in lists]
        path = choose_path("StableSPAM", foreach, fused, [local_tensor(x) for x in sub[0] + sub[1]])
        impl = {
            "single": _single_tensor_stable_spam,
            "foreach": _multi_tensor_stable_spam,
            "fused": _fused_stable_spam,
        }[path]
        impl(*sub, **hyper)


def check_gamma1(gamma1: float) -> float:
    """AdaGN's gamma1 is an EMA coefficient in [0, 1), or -1 for betas[0]; returned unchanged."""
    if gamma1 != -1 and not 0.0 <= gamma1 < 1.0:
        raise ValueError(f"Invalid gamma1: {gamma1} (in [0, 1), or -1 to use betas[0])")
    return gamma1


def _check_hyperparameters(group: dict[str, Any]) -> None:
    check_adam_hyperparameters(group)
    check_gamma1(group["gamma1"])
    for key in ("gamma2", "gamma3"):
        if not 0.0 <= group[key] < 1.0:
            raise ValueError(f"Invalid {key}: {group[key]} (in [0, 1))")
    total = group["total_steps"]
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise ValueError(f"Invalid total_steps: {total!r} (an int >= 1, or None for no cosine)")
    if not 0.0 <= group["eta_min"] <= 1.0:
        raise ValueError(f"Invalid eta_min: {group['eta_min']} (in [0, 1])")
    interval = group["reset_interval"]
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError(f"Invalid reset_interval: {interval!r} (an int >= 0; 0 never resets)")


# The per-parameter state that `stable_spam` takes, in the order of its arguments.
_STATE_KEYS = (
    "exp_avg",
    "exp_avg_sq",
    "clip_max_ema",
    "norm_ema",
    "norm_sq_ema",
    "step",
    "stats_step",
)


def _init_state(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    local = local_tensor(p)
    # The official code keeps its scalar statistics in the gradient's dtype; we keep them in fp32
    # at least, so that bf16 training does not round ||g||^2.
    stat_dtype = (
        local.dtype
        if group["reference_quirks"]
        else torch.promote_types(local.dtype, torch.float32)
    )
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["stats_step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    for key in ("clip_max_ema", "norm_ema", "norm_sq_ema"):
        state[key] = torch.zeros((), dtype=stat_dtype, device=local.device)


class StableSPAM(Optimizer):
    r"""Stable-SPAM (Huang et al. 2025): Adam with AdaClip, AdaGN and momentum reset.

    The update is the functional `stable_spam` (its docstring states the rule); this class keeps
    the state and the global step. Defaults: the paper's (`spam_opt.StableSPAMConfig` holds the
    same values).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: (b1, b2) of Adam; b1 is multiplied by the cosine s(t).
        eps: added to the denominators of Adam and of AdaGN.
        weight_decay: decoupled weight decay, applied before the update.
        gamma1: EMA coefficient of ||g|| in AdaGN (times s(t)); -1 uses betas[0].
        gamma2: EMA coefficient of ||g||^2 in AdaGN.
        gamma3: EMA coefficient of max|g| in AdaClip.
        total_steps: T_total of the cosine on b1; None keeps s = 1.
        eta_min: the final value of s.
        reset_interval: dT, updates between momentum resets (the official `update_proj_gap`); 0
            never resets.
        reference_quirks: reproduce the official code bit for bit (see the package README).
        foreach: the multi-tensor path (default when the fused one is not chosen).
        fused: the fused Triton step of ``layerwise_kernels``; None picks it for CUDA tensors when
            triton is installed.

    Counters, all in ``state_dict()`` so that a resumed run follows the uninterrupted trajectory
    (the official code restarts its step count, and with it the cosine, on resume): in every param
    group ``global_step`` (the number of completed updates, as in `SPAM`), in each parameter's
    state ``step`` (n_a) and ``stats_step`` (n).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gamma1: float = 0.7,
        gamma2: float = 0.9,
        gamma3: float = 0.999,
        total_steps: int | None = None,
        eta_min: float = 0.5,
        reset_interval: int = 1000,
        *,
        reference_quirks: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            gamma1=gamma1,
            gamma2=gamma2,
            gamma3=gamma3,
            total_steps=total_steps,
            eta_min=eta_min,
            reset_interval=reset_interval,
            reference_quirks=reference_quirks,
            foreach=foreach,
            fused=fused,
        )
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # A group added mid-training joins the schedule of the first group.
        group.setdefault("global_step", self.param_groups[0].get("global_step", 0))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("reference_quirks", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("global_step", 0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        restore_state_dtypes(
            self, state_dict, {"step", "stats_step", "clip_max_ema", "norm_ema", "norm_sq_ema"}
        )

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, state = init_group(self, group, _STATE_KEYS, _init_state)
            beta1, beta2 = group["betas"]
            stable_spam(
                params,
                grads,
                *state,
                global_step=group["global_step"],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                gamma1=group["gamma1"],
                gamma2=group["gamma2"],
                gamma3=group["gamma3"],
                total_steps=group["total_steps"],
                eta_min=group["eta_min"],
                reset_interval=group["reset_interval"],
                reference_quirks=group["reference_quirks"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
            group["global_step"] += 1
        return loss


def _single_tensor_stable_spam(
    params, grads, exp_avgs, exp_avg_sqs, clip_max_emas, norm_emas, norm_sq_emas, state_steps,
    stats_steps, *, scale, reset, lr, beta1, beta2, eps, weight_decay, gamma1, gamma2, gamma3,
    reference_quirks,
) -> None:  # fmt: skip
    # One parameter at a time, in the official code's order of floating-point operations: with
    # reference_quirks=True the result is bit-for-bit that of the official optimizer.
    for i, param in enumerate(params):
        p, grad = local_tensor(param), local_tensor(grads[i])
        m, v = local_tensor(exp_avgs[i]), local_tensor(exp_avg_sqs[i])
        max_ema, norm_ema, norm_sq_ema = clip_max_emas[i], norm_emas[i], norm_sq_emas[i]
        p.mul_(1 - lr * weight_decay)

        # AdaClip: entries above the bias-corrected EMA of max|g| are scaled down by Mh / max|g|.
        gmax = grad.abs().max() if grad.numel() else grad.new_zeros(())
        if is_dtensor(param):
            all_reduce_max(gmax, like=param)
        gmax = gmax.to(max_ema.dtype)
        state_steps[i] += 1
        stats_steps[i] += 1
        n = (state_steps[i] if reference_quirks else stats_steps[i]).item()
        max_ema.copy_(gamma3 * max_ema + (1 - gamma3) * gmax)
        max_hat = max_ema / (1 - gamma3**n)
        spikes = grad.abs() > max_hat
        g = grad
        if spikes.any():
            if not reference_quirks:
                g = g.clone()  # the official code clips p.grad itself
            g[spikes] = g[spikes] / gmax * max_hat

        # AdaGN: rescale g to the bias-corrected EMA of its norm over the EMA of its RMS.
        if is_dtensor(param):
            nu = all_reduce_sum(g.square().sum(), like=param).sqrt()
        else:
            nu = torch.linalg.vector_norm(g)
        nu = nu.to(norm_ema.dtype)
        b = gamma1 * scale
        norm_ema.copy_(b * norm_ema + (1 - b) * nu)
        norm_sq_ema.copy_(gamma2 * norm_sq_ema + (1 - gamma2) * nu**2)
        mu_hat = norm_ema / (1 - b**n)
        v_hat = norm_sq_ema / (1 - gamma2**n)
        target = mu_hat / (torch.sqrt(v_hat) + eps)
        if nu > 0:
            g = g / nu * target

        # MoRet: the official code rebinds fresh moments after it has read the old ones, so its
        # reset step still updates with the old m, v (and n_a = 1).
        if reset:
            state_steps[i].fill_(1)
            if not reference_quirks:
                m.zero_()
                v.zero_()
        n_a = state_steps[i].item()
        b1 = beta1 * scale
        bias_correction1 = 1 - b1**n_a
        bias_correction2 = 1 - beta2**n_a
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        p.add_(m / denom, alpha=-(lr / bias_correction1))
        if reset and reference_quirks:
            m.zero_()
            v.zero_()


def _stat_vector(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _update_statistics(
    gmax, clip_max_emas, norm_emas, norm_sq_emas, counts, params, sq_norm_of_clipped, *, scale,
    eps, gamma1, gamma2, gamma3,
):  # fmt: skip
    """Vectorised AdaClip/AdaGN statistics of the foreach and fused paths (one entry per tensor).

    `gmax` holds the local max|g| of each tensor; `sq_norm_of_clipped(clip_at, ratio)` returns the
    local sum of squares of each clipped gradient. Returns (clip_at, ratio, gn_scale) as tensors.
    """
    all_reduce_per_tensor(gmax, params, "max")
    max_ema = gamma3 * torch.stack(clip_max_emas) + (1 - gamma3) * gmax
    torch._foreach_copy_(clip_max_emas, list(max_ema.unbind()))
    clip_at = max_ema / _stat_vector([1 - gamma3**n for n in counts], gmax)
    ratio = clip_at / gmax
    sumsq = sq_norm_of_clipped(clip_at, ratio)
    all_reduce_per_tensor(sumsq, params, "sum")
    nu = sumsq.sqrt()
    b = gamma1 * scale
    norm_ema = b * torch.stack(norm_emas) + (1 - b) * nu
    norm_sq_ema = gamma2 * torch.stack(norm_sq_emas) + (1 - gamma2) * nu**2
    torch._foreach_copy_(norm_emas, list(norm_ema.unbind()))
    torch._foreach_copy_(norm_sq_emas, list(norm_sq_ema.unbind()))
    mu_hat = norm_ema / _stat_vector([1 - b**n for n in counts], gmax)
    v_hat = norm_sq_ema / _stat_vector([1 - gamma2**n for n in counts], gmax)
    target = mu_hat / (v_hat.sqrt() + eps)
    gn_scale = torch.where(nu > 0, target / nu, torch.ones_like(nu))
    return clip_at, ratio, gn_scale


def _adam_scalars(state_steps, *, scale, lr, beta1, beta2, eps):
    """Per tensor: (b1 s, -lr sqrt(1 - b2^n_a) / (1 - (b1 s)^n_a), eps sqrt(1 - b2^n_a)).

    p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) is computed as
    p -= (lr sqrt(bc2) / bc1) * m / (sqrt(v) + eps sqrt(bc2)): one division less per entry.
    """
    b1 = beta1 * scale
    steps, epss = [], []
    for step in state_steps:
        n_a = step.item()
        bc2_sqrt = math.sqrt(1 - beta2**n_a)
        steps.append(-lr * bc2_sqrt / (1 - b1**n_a))
        epss.append(eps * bc2_sqrt)
    return b1, steps, epss


def _multi_tensor_stable_spam(
    params, grads, exp_avgs, exp_avg_sqs, clip_max_emas, norm_emas, norm_sq_emas, state_steps,
    stats_steps, *, scale, reset, lr, beta1, beta2, eps, weight_decay, gamma1, gamma2, gamma3,
    reference_quirks,
) -> None:  # fmt: skip
    # Up to three passes over the gradients (max|g| and ||g||; clip and ||clipped g|| where AdaClip
    # acts; the update), in cache-sized slices on CPU; the per-tensor statistics are small vectors.
    # The clipped slices of the second pass are kept for the third.
    p_l = [local_tensor(t) for t in params]
    g_l = [local_tensor(t) for t in grads]
    m_l = [local_tensor(t) for t in exp_avgs]
    v_l = [local_tensor(t) for t in exp_avg_sqs]
    if weight_decay != 0:
        torch._foreach_mul_(p_l, 1 - lr * weight_decay)
    torch._foreach_add_(state_steps, 1)
    torch._foreach_add_(stats_steps, 1)
    counts = [s.item() for s in (state_steps if reference_quirks else stats_steps)]
    buckets = list(slices([p_l, g_l, m_l, v_l]))
    like = clip_max_emas[0]
    owners_all = torch.tensor([o for owners, _ in buckets for o in owners], device=like.device)

    def per_tensor(values: list[torch.Tensor], reduce: str) -> torch.Tensor:
        out = torch.zeros(len(p_l), dtype=like.dtype, device=like.device)
        if values:
            out.scatter_reduce_(0, owners_all, torch.stack(values).to(like.dtype), reduce)
        return out

    # Pass 1: max|g| and ||g|| of every slice (one read of g; the norm serves every tensor that
    # AdaClip leaves alone).
    maxes: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for _, (_, g, _, _) in buckets:
        maxes += torch._foreach_max(torch._foreach_abs(g))
        norms += torch._foreach_norm(g)
    gmax = per_tensor(maxes, "amax")

    clipped_buckets: list[list[torch.Tensor]] = []

    def sq_norm_of_clipped(clip_at: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        # Pass 2, over the tensors whose max exceeds the threshold only: clip, and redo the norm.
        active = (gmax > clip_at).tolist()
        clip_at_l, ratio_l = clip_at.tolist(), ratio.tolist()
        k = 0
        for owners, (_, g, _, _) in buckets:
            g_c = list(g)
            for j, o in enumerate(owners):
                if active[o]:
                    g_c[j] = torch.where(g[j].abs() > clip_at_l[o], g[j] * ratio_l[o], g[j])
                    norms[k + j] = torch.linalg.vector_norm(g_c[j])
                    if reference_quirks:  # the official code clips p.grad itself
                        g[j].copy_(g_c[j])
            clipped_buckets.append(g_c)
            k += len(owners)
        return per_tensor([n.square() for n in norms], "sum")

    _, _, gn_scale = _update_statistics(
        gmax, clip_max_emas, norm_emas, norm_sq_emas, counts, params, sq_norm_of_clipped,
        scale=scale, eps=eps, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
    )  # fmt: skip
    gn = gn_scale.tolist()

    if reset:
        for s in state_steps:
            s.fill_(1)
        if not reference_quirks:
            torch._foreach_zero_(m_l)
            torch._foreach_zero_(v_l)
    b1, steps, epss = _adam_scalars(
        state_steps, scale=scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps
    )
    for (owners, (p, _, m, v)), g_c in zip(buckets, clipped_buckets):
        g = torch._foreach_mul(g_c, [gn[o] for o in owners])
        torch._foreach_lerp_(m, g, 1 - b1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, [epss[o] for o in owners])
        torch._foreach_addcdiv_(p, m, denom, [steps[o] for o in owners])
        if reset and reference_quirks:
            torch._foreach_zero_(m)
            torch._foreach_zero_(v)


def _fused_stable_spam(
    params, grads, exp_avgs, exp_avg_sqs, clip_max_emas, norm_emas, norm_sq_emas, state_steps,
    stats_steps, *, scale, reset, lr, beta1, beta2, eps, weight_decay, gamma1, gamma2, gamma3,
    reference_quirks,
) -> None:  # fmt: skip
    # Two reduction kernels (max|g|, ||clipped g||^2 per tensor) and one update kernel; the
    # statistics stay on the device, so a step never waits for the host.
    from layerwise_kernels.spam_step import (
        per_tensor_abs_max,
        per_tensor_clipped_sq_norm,
        stable_spam_step_,
    )

    p_l = [local_tensor(t) for t in params]
    g_l = [local_tensor(t) for t in grads]
    torch._foreach_add_(state_steps, 1)
    torch._foreach_add_(stats_steps, 1)
    counts = [s.item() for s in (state_steps if reference_quirks else stats_steps)]
    gmax = per_tensor_abs_max(g_l, backend="triton").to(clip_max_emas[0].dtype)
    clip_at, ratio, gn_scale = _update_statistics(
        gmax, clip_max_emas, norm_emas, norm_sq_emas, counts, params,
        lambda at, r: per_tensor_clipped_sq_norm(g_l, at, r, backend="triton").to(at.dtype),
        scale=scale, eps=eps, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
    )  # fmt: skip
    if reset:
        for s in state_steps:
            s.fill_(1)
    b1, steps, epss = _adam_scalars(
        state_steps, scale=scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps
    )
    stable_spam_step_(
        p_l,
        g_l,
        [local_tensor(t) for t in exp_avgs],
        [local_tensor(t) for t in exp_avg_sqs],
        clip_at,
        ratio,
        gn_scale,
        [-s for s in steps],
        epss,
        beta1=b1,
        beta2=beta2,
        decay=1 - lr * weight_decay,
        reset_moments=("after" if reference_quirks else "before") if reset else "none",
        write_clipped_grad=reference_quirks,
        backend="triton",
    )
