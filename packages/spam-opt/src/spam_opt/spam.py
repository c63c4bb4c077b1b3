"""SPAM: Spike-Aware Adam with Momentum Reset.

Huang, Zhu, Jin, Liu, Wang, Liu, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
Training", ICLR 2025 (arXiv:2501.06842). Adam plus three changes, all driven by two global counters,
t (completed steps) and k (steps since the last momentum reset, starting at N + 1):

    c = t + 1                                                   # this step
    s = 1 - 0.99 * (1 + cos(pi * k / (N + 1))) / 2  if k < N else 1        # cosine warm-up after a reset
    every param (n = its Adam count, never reset):
        if c % dT == 0:  m = v = 0                                           # momentum reset
        n += 1
        if theta > 0 and c >= A and c % dT >= A:                            # spike-aware clipping,
            g = sign(g) * sqrt(theta * v)  where g^2 > theta * v            #   off for A steps after a reset
        m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
        p = p - lr * s * sqrt(1 - b2^n) / (1 - b1^n) * m / (sqrt(v) + eps)
        p = p - lr * wd * p                                                  # decoupled, after the update
    t += 1; k += 1; if (t + 1) % dT == 0: k = 0 (and sparse-momentum masks are redrawn)

(N = warmup_steps, theta = threshold, dT = reset_interval, A = clip_delay; v in the spike test is the
raw previous second moment, no bias correction.) A param group with `density < 1` keeps its moments on
a random subset of its entries only ("sparse momentum"); the subset is redrawn every dT steps and
the other entries are frozen for that window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from layerwise_core import is_dtensor, local_tensor
from spam_opt._optimizer import (
    check_grad,
    choose_path,
    group_by_device_and_dtype,
    restore_state_dtypes,
    slices,
)

__all__ = ["SPAM", "spam", "spam_warmup_scale"]


def spam_warmup_scale(warmup_step: int, warmup_steps: int) -> float:
    """The learning-rate multiplier k steps after a momentum reset (SPAM, Sec. 3.3).

        s(k) = 1 - 0.99 * (1 + cos(pi * k / (N + 1))) / 2   for k < N,   1 for k >= N

    0.01 at the reset step (k = 0) rising to 1 over N steps: the closed form of the official code's
    `CosineAnnealingLR(T_max=N + 1)` on 0.99, subtracted from 1, with the same rounding.
    """
    if warmup_step >= warmup_steps:
        return 1.0
    return 1 - 0.99 * (1 + math.cos(math.pi * warmup_step / (warmup_steps + 1))) / 2


def _check_hyperparameters(group: dict[str, Any]) -> None:
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    if isinstance(lr, torch.Tensor) or not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr!r} (a float >= 0)")
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not group["weight_decay"] >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    for key in ("warmup_steps", "reset_interval", "clip_delay"):
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"Invalid {key}: {value!r} (an int >= 0; reset_interval=0 never resets)"
            )
    if not group["threshold"] >= 0.0:
        raise ValueError(f"Invalid threshold: {group['threshold']} (>= 0; 0 turns clipping off)")
    if group["threshold"] > 0 and group["clip_delay"] < 2:
        # v = 0 at step 1 (and at a reset): every entry would be a spike and be clipped to 0, v would
        # stay 0, and the optimizer would never move again.
        raise ValueError(
            f"Invalid clip_delay: {group['clip_delay']} (>= 2 with threshold > 0: the spike test "
            "needs a second moment from at least one unclipped step; threshold=0 turns it off)"
        )
    if not 0.0 < group["density"] <= 1.0:
        raise ValueError(
            f"Invalid density: {group['density']} (sparse momentum needs 0 < density <= 1)"
        )


class SPAM(Optimizer):
    r"""SPAM (Huang et al., ICLR 2025): Adam with spike-aware clipping and periodic momentum reset.

    Update (global step c = t + 1, k steps since the last reset; see the module docstring)::

        m, v = 0, 0                                   if c % reset_interval == 0
        g    = sign(g) sqrt(theta v)  where g^2 > theta v   (c >= clip_delay, c % reset_interval >= clip_delay)
        m    = b1 m + (1 - b1) g ;   v = b2 v + (1 - b2) g^2
        p   -= lr s(k) sqrt(1 - b2^n) / (1 - b1^n) m / (sqrt(v) + eps) ;   p -= lr wd p

    Args:
        params: parameters or param groups. A group may carry ``density < 1`` for sparse momentum
            (moments on a random ``density`` fraction of entries, redrawn every reset interval).
        lr: learning rate.
        betas: (b1, b2) of Adam.
        eps: added to sqrt(v) (1e-6, as in the official code).
        weight_decay: decoupled weight decay, applied after the update and not warmed up.
        warmup_steps: N, steps of cosine warm-up of the learning rate after every momentum reset
            (150 in the paper; the official training script passes its LR warm-up here instead).
        threshold: theta of the spike test g^2 > theta v; 0 turns clipping off.
        reset_interval: dT, steps between momentum resets; 0 never resets.
        clip_delay: A, no clipping in the first A steps of training and after every reset (v is
            too young to judge a spike).
        reference_quirks: reproduce the official code bit for bit (see the package README): spikes
            are clipped in ``p.grad`` itself, weight decay of a ``density`` group is a no-op, masks
            are redrawn as Bernoulli(density) on the parameter's device.
        foreach: the multi-tensor path (default when the fused one is not chosen).
        fused: the fused Triton step of ``layerwise_kernels``; None picks it for CUDA tensors when
            triton is installed.

    All counters (global step t, warm-up position k, per-parameter Adam counts) are in
    ``state_dict()``: t and k in every param group (``global_step``, ``warmup_step``), n in each
    parameter's state (``step``), so a resumed run follows the uninterrupted trajectory.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 150,
        threshold: float = 5000.0,
        reset_interval: int = 500,
        clip_delay: int = 20,
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
            warmup_steps=warmup_steps,
            threshold=threshold,
            reset_interval=reset_interval,
            clip_delay=clip_delay,
            density=1.0,
            reference_quirks=reference_quirks,
            foreach=foreach,
            fused=fused,
        )
        _check_hyperparameters(defaults)
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot both be True")
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "global_step" not in group:
            # A group added mid-training joins the schedule of the first group.
            first = self.param_groups[0]
            group["global_step"] = first.get("global_step", 0)
            group["warmup_step"] = first.get("warmup_step", group["warmup_steps"] + 1)
        if group["density"] < 1.0:
            for p in group["params"]:
                self.state[p]["mask"] = _draw_mask(p, group["density"], bernoulli=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("density", 1.0)
            group.setdefault("reference_quirks", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("global_step", 0)
            group.setdefault("warmup_step", group["warmup_steps"] + 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict, {"step", "mask"})

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, state_steps, masks) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            check_grad("SPAM", p, p.grad)
            state = self.state[p]
            if "step" not in state:
                # n lives on the CPU as in torch.optim.Adam: its bias corrections are host scalars.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                if "mask" in state:
                    nnz = int(local_tensor(state["mask"]).sum())
                    local = local_tensor(p)
                    state["exp_avg"] = local.new_zeros(nnz)
                    state["exp_avg_sq"] = local.new_zeros(nnz)
                else:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])
            masks.append(state.get("mask"))

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            exp_avgs: list[torch.Tensor] = []
            exp_avg_sqs: list[torch.Tensor] = []
            state_steps: list[torch.Tensor] = []
            masks: list[torch.Tensor | None] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, state_steps, masks)
            beta1, beta2 = group["betas"]
            spam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                state_steps,
                masks,
                global_step=group["global_step"],
                warmup_step=group["warmup_step"],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                warmup_steps=group["warmup_steps"],
                threshold=group["threshold"],
                reset_interval=group["reset_interval"],
                clip_delay=group["clip_delay"],
                reference_quirks=group["reference_quirks"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
            group["global_step"] += 1
            group["warmup_step"] += 1
            interval = group["reset_interval"]
            if interval > 0 and (group["global_step"] + 1) % interval == 0:
                # The next step resets the moments: it starts the warm-up at s = 0.01 and a new mask.
                group["warmup_step"] = 0
                if group["density"] < 1.0:
                    self._redraw_masks(group)
        return loss

    def _redraw_masks(self, group: dict[str, Any]) -> None:
        quirks = group["reference_quirks"]
        for p in group["params"]:
            state = self.state[p]
            old = state["mask"]
            new = _draw_mask(p, group["density"], bernoulli=quirks)
            state["mask"] = new
            if "exp_avg" not in state:
                continue
            old_l, new_l = local_tensor(old), local_tensor(new)
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state[key].new_zeros(int(new_l.sum()))
                if quirks:
                    # The official code carries the moments of entries kept by both masks over; the
                    # reset of the next step zeroes them unless the parameter has no grad then.
                    kept = old_l & new_l
                    moment[kept[new_l]] = state[key][kept[old_l]]
                state[key] = moment


def _draw_mask(p: torch.Tensor, density: float, *, bernoulli: bool) -> torch.Tensor:
    """A random boolean mask of p's (full) shape with `density` of its entries set.

    Exactly round-down(density * numel) entries from `torch.randperm` on the CPU generator (the
    official initial mask), or, with `bernoulli`, each entry independently (the official redraw, on
    the parameter's device). Every rank of an FSDP2 job draws the same full mask from the same seed
    and keeps its shard, so the masks do not depend on the sharding.
    """
    device = local_tensor(p).device
    if bernoulli:
        full = torch.rand(p.shape, device=device) < density
    else:
        numel = p.numel()
        count = int(density * numel)
        flat = torch.zeros(numel, dtype=torch.bool)
        if count > 0:
            flat[torch.randperm(numel)[:count]] = True
        full = flat.view(p.shape).to(device)
    if is_dtensor(p):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
    return full


def spam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    masks: list[torch.Tensor | None] | None = None,
    *,
    global_step: int,
    warmup_step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    warmup_steps: int,
    threshold: float,
    reset_interval: int,
    clip_delay: int,
    reference_quirks: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    r"""Functional SPAM step (Huang et al., ICLR 2025) on lists of tensors, in place.

    With c = global_step + 1 (this step), k = warmup_step, n = state_steps[i] + 1::

        s = 1 - 0.99 (1 + cos(pi k / (N + 1))) / 2   if k < N else 1
        m, v = 0, 0                                   if dT > 0 and c % dT == 0
        g = sign(g) sqrt(theta v) where g^2 > theta v if theta > 0, c >= A and (dT == 0 or c % dT >= A)
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        p = p - lr s sqrt(1 - b2^n) / (1 - b1^n) m / (sqrt(v) + eps) ;  p = p - lr wd p

    `masks[i]` (None for dense parameters) is a boolean mask of params[i]'s shape; its moments are
    then 1-D over the masked entries and only those entries move. The caller advances global_step
    and warmup_step; state_steps are incremented here. Parameters may be FSDP2 DTensor shards (the
    update is elementwise).
    """
    scale = spam_warmup_scale(warmup_step, warmup_steps)
    c = global_step + 1
    hyper = dict(
        scale=scale,
        reset=reset_interval > 0 and c % reset_interval == 0,
        clip=threshold > 0
        and c >= clip_delay
        and (reset_interval == 0 or c % reset_interval >= clip_delay),
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        threshold=threshold,
        reference_quirks=reference_quirks,
    )
    masks = masks if masks is not None else [None] * len(params)
    lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps)
    # Sparse-momentum parameters gather and scatter through their mask: the per-tensor code, always.
    sparse = [i for i, mask in enumerate(masks) if mask is not None]
    if sparse:
        _single_tensor_spam(
            *([x[i] for i in sparse] for x in lists), [masks[i] for i in sparse], **hyper
        )
    dense = [i for i, mask in enumerate(masks) if mask is None]
    for idx in group_by_device_and_dtype([params[i] for i in dense]).values():
        sub = [[x[dense[i]] for i in idx] for x in lists]
        path = choose_path("SPAM", foreach, fused, [local_tensor(t) for t in sub[0] + sub[1]])
        if path == "single":
            _single_tensor_spam(*sub, None, **hyper)
        elif path == "foreach":
            _multi_tensor_spam(*sub, **hyper)
        else:
            _fused_spam(*sub, **hyper)


def _single_tensor_spam(
    params, grads, exp_avgs, exp_avg_sqs, state_steps, masks, *, scale, reset, clip, lr, beta1,
    beta2, eps, weight_decay, threshold, reference_quirks,
) -> None:  # fmt: skip
    # One parameter at a time, in the official code's order of floating-point operations: with
    # reference_quirks=True the result is bit-for-bit that of the official optimizer.
    for i, param in enumerate(params):
        p, grad = local_tensor(param), local_tensor(grads[i])
        m, v = local_tensor(exp_avgs[i]), local_tensor(exp_avg_sqs[i])
        mask = None if masks is None or masks[i] is None else local_tensor(masks[i])
        g = grad if mask is None else grad[mask]  # a copy for sparse momentum
        if reset:
            m.zero_()
            v.zero_()
        state_steps[i] += 1
        n = state_steps[i].item()
        if clip:
            if mask is None and not reference_quirks:
                g = g.clone()  # the official code clips p.grad itself
            spike = g.square() > threshold * v
            g[spike] = g[spike].sign() * torch.sqrt(v[spike] * threshold)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.sqrt().add_(eps)
        step_size = lr * (math.sqrt(1 - beta2**n) / (1 - beta1**n))
        update = m / denom
        if mask is None:
            p.add_(update, alpha=-step_size * scale)
            if weight_decay > 0:
                p.add_(p, alpha=-lr * weight_decay)
        elif reference_quirks:
            # The official code scatters the update into p.grad and decays a copy of p[mask].
            grad[mask] = update
            grad[~mask] = 0
            grad.mul_(scale)
            p.add_(grad, alpha=-step_size)
        else:
            p_masked = p[mask]
            p_masked.add_(update, alpha=-step_size * scale)
            if weight_decay > 0:
                p_masked.add_(p_masked, alpha=-lr * weight_decay)
            p[mask] = p_masked


def _bias_corrected_step_sizes(state_steps, lr, scale, beta1, beta2) -> list[float]:
    out = []
    for step in state_steps:
        n = step.item()
        out.append(lr * scale * (math.sqrt(1 - beta2**n) / (1 - beta1**n)))
    return out


def _multi_tensor_spam(
    params, grads, exp_avgs, exp_avg_sqs, state_steps, *, scale, reset, clip, lr, beta1, beta2,
    eps, weight_decay, threshold, reference_quirks,
) -> None:  # fmt: skip
    # The same update with foreach ops, in fewer passes: the moments are lerps, the parameter update
    # one addcdiv, and only slices that hold a spike are clipped. On CPU the tensors are walked in
    # cache-sized slices (see `slices`).
    p_l = [local_tensor(t) for t in params]
    g_l = [local_tensor(t) for t in grads]
    m_l = [local_tensor(t) for t in exp_avgs]
    v_l = [local_tensor(t) for t in exp_avg_sqs]
    if reset:
        torch._foreach_zero_(m_l)
        torch._foreach_zero_(v_l)
    torch._foreach_add_(state_steps, 1)
    neg_steps = [-s for s in _bias_corrected_step_sizes(state_steps, lr, scale, beta1, beta2)]
    for owners, (p, g, m, v) in slices([p_l, g_l, m_l, v_l]):
        if clip:
            # Spikes (g^2 > theta v) are rare: find the slices that hold one from g^2 - theta v,
            # which the second moment needs anyway (as g^2), and clip only those slices.
            g_sq = list(torch._foreach_mul(g, g))
            excess = torch._foreach_add(g_sq, v, alpha=-threshold)
            flagged = [x.item() > 0 for x in torch._foreach_max(excess)]
            if any(flagged):
                g = list(g)
                for j in [j for j, spiky in enumerate(flagged) if spiky]:
                    bound = torch.sqrt(v[j] * threshold)
                    clipped = torch.where(excess[j] > 0, torch.copysign(bound, g[j]), g[j])
                    g_sq[j] = clipped * clipped
                    if reference_quirks:
                        g[j].copy_(clipped)  # the official code clips p.grad itself
                    else:
                        g[j] = clipped
            torch._foreach_lerp_(v, g_sq, 1 - beta2)
        else:
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, 1 - beta2)
        torch._foreach_lerp_(m, g, 1 - beta1)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(p, m, denom, [neg_steps[o] for o in owners])
        if weight_decay > 0:
            torch._foreach_mul_(p, 1 - lr * weight_decay)


def _fused_spam(
    params, grads, exp_avgs, exp_avg_sqs, state_steps, *, scale, reset, clip, lr, beta1, beta2,
    eps, weight_decay, threshold, reference_quirks,
) -> None:  # fmt: skip
    from layerwise_kernels.spam_step import spam_step_

    m_l = [local_tensor(t) for t in exp_avgs]
    v_l = [local_tensor(t) for t in exp_avg_sqs]
    if reset:
        torch._foreach_zero_(m_l)
        torch._foreach_zero_(v_l)
    torch._foreach_add_(state_steps, 1)
    spam_step_(
        [local_tensor(t) for t in params],
        [local_tensor(t) for t in grads],
        m_l,
        v_l,
        _bias_corrected_step_sizes(state_steps, lr, scale, beta1, beta2),
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        clip_threshold=threshold if clip else 0.0,
        decay=1 - lr * weight_decay if weight_decay > 0 else 1.0,
        write_clipped_grad=reference_quirks,
        backend="triton",
    )
