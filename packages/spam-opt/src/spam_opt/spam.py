"""SPAM: Spike-Aware Adam with Momentum Reset.

Huang, Zhu, Jin, Liu, Wang, Liu, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
Training", ICLR 2025 (arXiv:2501.06842). Adam plus spike-aware clipping, a periodic momentum reset and
a cosine warm-up of the step after each reset. The update rule is stated once, in the docstring of
the functional step `spam` below; the optimizer `SPAM` keeps the state and the two schedule counters
and calls it, as `torch.optim.Adam` calls `torch.optim.adam.adam`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from layerwise_core import is_dtensor, local_tensor
from spam_opt._optimizer import (
    check_adam_hyperparameters,
    choose_path,
    group_by_device_and_dtype,
    init_group,
    restore_state_dtypes,
    slices,
)

__all__ = ["SPAM", "spam", "spam_warmup_scale"]


def spam_warmup_scale(warmup_step: int, warmup_steps: int) -> float:
    """The learning-rate multiplier k updates after a momentum reset (SPAM, Sec. 3.3).

        s(k) = 1 - 0.99 * (1 + cos(pi * k / (N + 1))) / 2   for k < N,   1 for k >= N

    0.01 at the reset update (k = 0) rising to 1 over N updates: the closed form of the official
    code's `CosineAnnealingLR(T_max=N + 1)` on 0.99, subtracted from 1, with the same rounding.
    """
    if warmup_step >= warmup_steps:
        return 1.0
    return 1 - 0.99 * (1 + math.cos(math.pi * warmup_step / (warmup_steps + 1))) / 2


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
    reference_quirks: bool,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    r"""One SPAM update (Huang et al., ICLR 2025) of lists of tensors, in place.

    With t = global_step + 1 (this update; global_step counts the updates before it), k =
    warmup_step (updates since the last momentum reset), n = state_steps[i] + 1 (the parameter's
    Adam count, never reset), N = warmup_steps, theta = threshold, dT = reset_interval and
    A = clip_delay::

        s = 1 - 0.99 (1 + cos(pi k / (N + 1))) / 2   if k < N else 1    # warm-up after a reset
        m, v = 0, 0                                   if dT > 0 and t % dT == 0      # reset
        g = sign(g) sqrt(theta v)  where g^2 > theta v                  # spike-aware clipping,
                                      if theta > 0, t >= A and (dT == 0 or t % dT >= A)
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        p = p - lr s sqrt(1 - b2^n) / (1 - b1^n) m / (sqrt(v) + eps)
        p = p - lr wd p                                                 # decoupled, after the update

    v in the spike test is the raw previous second moment (no bias correction). `masks[i]` (None
    for dense parameters) is the boolean sparse-momentum mask of params[i]: its moments are then 1-D
    over the masked entries and only those entries move. With `reference_quirks` the official
    code's side effects are reproduced too: the clipped gradient is written into p.grad, and a
    masked parameter's p.grad receives the scaled update while its weight decay is a no-op.

    state_steps are incremented here; the caller advances global_step and warmup_step (`SPAM.step`:
    both by one, and warmup_step to 0 before a reset update). Parameters may be FSDP2 DTensor
    shards: the update is elementwise.
    """
    scale = spam_warmup_scale(warmup_step, warmup_steps)
    t = global_step + 1
    hyper = dict(
        scale=scale,
        reset=reset_interval > 0 and t % reset_interval == 0,
        clip=threshold > 0
        and t >= clip_delay
        and (reset_interval == 0 or t % reset_interval >= clip_delay),
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
        path = choose_path("SPAM", foreach, fused, [local_tensor(x) for x in sub[0] + sub[1]])
        if path == "single":
            _single_tensor_spam(*sub, None, **hyper)
        elif path == "foreach":
            _multi_tensor_spam(*sub, **hyper)
        else:
            _fused_spam(*sub, **hyper)


def _check_hyperparameters(group: dict[str, Any]) -> None:
    check_adam_hyperparameters(group)
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


# The per-parameter state that `spam` takes, in the order of its arguments.
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "step", "mask")


def _init_state(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    # n lives on the CPU as in torch.optim.Adam: its bias corrections are host scalars.
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    if "mask" in state:  # sparse momentum: moments on the masked entries of the local shard only
        nnz = int(local_tensor(state["mask"]).sum())
        local = local_tensor(p)
        state["exp_avg"] = local.new_zeros(nnz)
        state["exp_avg_sq"] = local.new_zeros(nnz)
    else:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class SPAM(Optimizer):
    r"""SPAM (Huang et al., ICLR 2025): Adam with spike-aware clipping and periodic momentum reset.

    The update is the functional `spam` (its docstring states the rule); this class keeps the
    state and the counters. Defaults: the paper's (`spam_opt.SPAMConfig` holds the same values).

    Args:
        params: parameters or param groups. A group may carry ``density < 1`` for sparse momentum
            (moments on a random ``density`` fraction of entries, redrawn every reset interval;
            `spam_opt.sparse_momentum_groups` makes such groups).
        lr: learning rate.
        betas: (b1, b2) of Adam.
        eps: added to sqrt(v) (the official code's value, larger than Adam's).
        weight_decay: decoupled weight decay, applied after the update and not warmed up.
        warmup_steps: N, updates of cosine warm-up of the learning rate after every momentum reset
            (the paper's value; the official training script passes its LR warm-up here instead).
        threshold: theta of the spike test g^2 > theta v; 0 turns clipping off.
        reset_interval: dT, updates between momentum resets; 0 never resets.
        clip_delay: A, no clipping in the first A updates of training and after every reset (v is
            too young to judge a spike).
        reference_quirks: reproduce the official code bit for bit (see the package README): spikes
            are clipped in ``p.grad`` itself, weight decay of a ``density`` group is a no-op, masks
            are redrawn as Bernoulli(density) on the parameter's device.
        foreach: the multi-tensor path (default when the fused one is not chosen).
        fused: the fused Triton step of ``layerwise_kernels``; None picks it for CUDA tensors when
            triton is installed.

    Counters, all in ``state_dict()`` so that a resumed run follows the uninterrupted trajectory:
    in every param group ``global_step`` (the number of completed updates, as in `StableSPAM`) and
    ``warmup_step`` (k of the next update), in each parameter's state ``step`` (n).
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
            density=1.0,  # dense unless a param group says otherwise
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
            spam(
                params,
                grads,
                *state,
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
                # The next update resets the moments: it starts the warm-up at s = 0.01 and a new mask.
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
