"""LORO: Adam on the factors of `LowRankLinear` with periodic exact Riemannian steps (Mo, Huang and
Pan, "Parameter and Memory Efficient Pretraining via Low-rank Riemannian Optimization", ICLR 2025;
reference code github.com/mzf666/LORO-main, `loro_torch/loro_optim.py`).

    groups = LOROConfig().param_groups(model, weight_decay=0.0)     # one group per factor pair
    optimizer = LOROConfig(lr=1e-2, exact_every=500).build(groups)
    scheduler = LambdaLR(optimizer, lambda s: warmup_cosine(s, ...) * cfg.schedule_factor(s))

A factor pair is B = weight_out [out, r] and A = weight_in [in, r] of one layer, W = B A^T. Each
factor keeps Adam moments of its own gradient (the reference's form, transformers' AdamW):

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,   u = m / (sqrt(v) + eps)
    eta_t = lr * sqrt(1 - b2^t) / (1 - b1^t)          (bias correction folded into the step size)

Lazy step (every step but the exact ones): B -= eta_t * c * u_B and A -= eta_t * c * u_A with the
lazy LR scaler c = rank / hidden (`lr_scaler=-1`, LORO's `loro_lr_scaler=-1`): rank = r, hidden =
the model's `config.hidden_size` (the same d for attention and MLP factors, also for the MLP's
[intermediate, r] factors; without a model config each factor's row count, the reference's
fallback). A positive `lr_scaler` is used as c itself. Then decoupled weight decay
p -= lr * weight_decay * p on the updated factor (the reference decays after the step).

Exact step (every `exact_every`-th step, 1-based: steps K, 2K, ...): the Adam-preconditioned
factor updates u_B, u_A stand in for G A and G^T B (the factor gradients of a full gradient G of
W, which is never formed). With B = U R_B and A = V R_A (reduced QR):

    G V     := u_B R_A^{-1}      [out, r]        U^T G := R_B^{-T} u_A^T   [r, in]
    xi = U (U^T G) + (I - U U^T) (G V) V^T           (the tangent vector at W; = P_U G + G P_V -
                                                       P_U G P_V when u_B = G A and u_A = G^T B)
    W - eta_t xi = [U Q2] C [V Q1]^T,  C = [[R_B R_A^T - eta_t K0, -eta_t K1^T], [-eta_t K2, 0]]

where K0 = (U^T G) V, Q1 K1 = QR(((U^T G)(I - V V^T))^T), Q2 K2 = QR((I - U U^T)(G V)). The 2r x 2r
core C = Uc S Vc^T (SVD) gives the rank-r truncated SVD of W - eta_t xi (the retraction), split
evenly: B = [U Q2] Uc_r sqrt(S_r), A = [V Q1] Vc_r sqrt(S_r) (balanced: A^T A = B^T B = S_r). No
lazy scaler and no weight decay at exact steps (as the reference). Computed in at least fp32.
After an exact step every Adam state is reset (`reset_states="all"`, the released scripts'
`--loro_refresh all`: factor and non-factor parameters; "low_rank": factors only; "none").

Non-factor parameters (embeddings, norms, lm_head): Adam of the same form with weight decay lr *
weight_decay after the step (the reference's `_regular_step`).

FSDP2: factors may be DTensors. Lazy and regular steps are elementwise on the local shards; the
exact step gathers the full factors and updates (`full_tensor`, a collective: every process
steps every pair), computes the new pair on every process and keeps its own shard
(`layerwise_core.local_part`).

The LR schedule: see `LOROConfig.schedule_factor` (the reference's "cosine_restart" re-warm-up
after each reset) and docs/sparse-ft.md for how it maps onto the reference's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from layerwise_core import (
    AdamBetas,
    LayerwiseConfig,
    decay_param_groups,
    full_tensor,
    local_part,
    local_tensor,
)
from sparse_ft.low_rank import LowRankLinear

__all__ = ["LOROAdamW", "LOROConfig", "loro_exact_update", "loro_param_groups"]

ResetStates = Literal["all", "low_rank", "none"]


def loro_param_groups(
    model: nn.Module, weight_decay: float, hidden_size: int | None = None
) -> list[dict[str, Any]]:
    """One group per `LowRankLinear` (keys "params" = [weight_in, weight_out], "param_names",
    "loro_pair": True, "rank", "hidden", "weight_decay"), then the other trainable parameters as
    `layerwise_core.decay_param_groups` (decay on matrices only). `hidden` (the lazy scaler's
    denominator): `hidden_size`, else `model.config.hidden_size`, else None (each factor's row
    count). A LowRankLinear's bias goes with the other parameters."""
    if hidden_size is None:
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    groups, taken = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, LowRankLinear):
            continue
        pair = (module.weight_in, module.weight_out)
        if not all(p.requires_grad for p in pair) or any(id(p) in taken for p in pair):
            continue
        if module.rank > min(module.in_features, module.out_features):
            raise ValueError(
                f"loro_param_groups: {name} has rank {module.rank} > min(in, out) = "
                f"{min(module.in_features, module.out_features)}; LORO's exact step needs "
                "rank <= min(in, out): build it with a smaller rank"
            )
        taken.update(id(p) for p in pair)
        prefix = f"{name}." if name else ""
        groups.append(
            {
                "params": list(pair),
                "param_names": [f"{prefix}weight_in", f"{prefix}weight_out"],
                "loro_pair": True,
                "rank": module.rank,
                "hidden": hidden_size,
                "weight_decay": weight_decay,
            }
        )
    if not groups:
        raise ValueError(
            "loro_param_groups: the model has no trainable LowRankLinear: apply low rank first "
            "(e.g. model.low_rank: 128 / sparse_ft.apply_elas), or use AdamW"
        )
    for group in decay_param_groups(model, weight_decay):
        keep = [i for i, p in enumerate(group["params"]) if id(p) not in taken]
        if keep:
            group["params"] = [group["params"][i] for i in keep]
            group["param_names"] = [group["param_names"][i] for i in keep]
            groups.append(group)
    return groups


def _solve_right(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x R^{-1} for an upper-triangular R."""
    return torch.linalg.solve_triangular(r, x, upper=True, left=False)


@torch.no_grad()
def loro_exact_update(
    weight_out: torch.Tensor,
    weight_in: torch.Tensor,
    update_out: torch.Tensor,
    update_in: torch.Tensor,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One exact LORO step of the pair W = weight_out @ weight_in.T (see the module docstring):
    `update_out` / `update_in` stand for G @ weight_in / G.T @ weight_out; returns the new
    (weight_out, weight_in), balanced, in the inputs' dtype (computed in at least fp32)."""
    dtype = weight_out.dtype
    work = torch.promote_types(dtype, torch.float32)
    b, a = weight_out.to(work), weight_in.to(work)
    db, da = update_out.to(work), update_in.to(work)
    rank = b.shape[1]
    u, rb = torch.linalg.qr(b)
    v, ra = torch.linalg.qr(a)
    g_v = _solve_right(ra, db)  # G V = u_B R_A^{-1}, [out, r]
    ut_g = _solve_right(rb, da).T  # U^T G = R_B^{-T} u_A^T, [r, in]
    k0 = ut_g @ v
    q1, k1 = torch.linalg.qr((ut_g - k0 @ v.T).T)  # ((U^T G)(I - V V^T))^T, [in, r]
    q2, k2 = torch.linalg.qr(g_v - u @ (u.T @ g_v))  # (I - U U^T) G V, [out, r]
    core = torch.zeros(2 * rank, 2 * rank, dtype=work, device=b.device)
    core[:rank, :rank] = rb @ ra.T - lr * k0
    core[:rank, rank:] = -lr * k1.T
    core[rank:, :rank] = -lr * k2
    uc, s, vch = torch.linalg.svd(core)
    root = s[:rank].sqrt()
    new_out = torch.cat([u, q2], dim=1) @ (uc[:, :rank] * root)
    new_in = torch.cat([v, q1], dim=1) @ (vch[:rank].T * root)
    return new_out.to(dtype), new_in.to(dtype)


class LOROAdamW(torch.optim.Optimizer):
    """LORO (see the module docstring). Param groups from `loro_param_groups`; a group without
    "loro_pair" is a plain Adam group. The step counter (which steps are exact) is kept in every
    group's "loro_step" (saved with `state_dict`); `step(exact=True/False)` overrides the rule.

    `reference_quirks=True`: the lazy steps' weight decay uses the bias-corrected step size
    eta_t instead of lr (the reference's `loro_update_fn`; its non-factor decay uses lr)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        exact_every: int | None = 500,
        lr_scaler: float = -1.0,
        reset_states: ResetStates = "all",
        reference_quirks: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LOROAdamW: lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"LOROAdamW: betas must each be in [0, 1), got {tuple(betas)}")
        if exact_every is not None and exact_every < 1:
            raise ValueError(
                f"LOROAdamW: exact_every must be >= 1 or None (lazy steps only), got {exact_every}"
            )
        if lr_scaler == 0 or not math.isfinite(lr_scaler):
            raise ValueError(
                f"LOROAdamW: lr_scaler must be -1 (rank / hidden) or a positive factor, "
                f"got {lr_scaler}"
            )
        if reset_states not in ("all", "low_rank", "none"):
            raise ValueError(
                f"LOROAdamW: reset_states must be 'all', 'low_rank' or 'none', got {reset_states!r}"
            )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "loro_pair": False,
            "loro_step": 0,
        }
        super().__init__(params, defaults)
        self.exact_every = exact_every
        self.lr_scaler = lr_scaler
        self.reset_states = reset_states
        self.reference_quirks = reference_quirks
        for group in self.param_groups:
            if group["loro_pair"]:
                self._check_pair(group)

    @staticmethod
    def _check_pair(group: dict[str, Any]) -> None:
        params = group["params"]
        shapes = [tuple(p.shape) for p in params]
        if len(params) != 2 or any(len(s) != 2 for s in shapes) or shapes[0][1] != shapes[1][1]:
            raise ValueError(
                "LOROAdamW: a 'loro_pair' group holds [weight_in [in, r], weight_out [out, r]] "
                f"of one LowRankLinear, got shapes {shapes}: build groups with loro_param_groups"
            )

    @property
    def steps_taken(self) -> int:
        """Optimizer steps taken so far (restored by `load_state_dict`)."""
        return self.param_groups[0]["loro_step"] if self.param_groups else 0

    def is_exact_step(self, step: int) -> bool:
        """Whether the step with 0-based index `step` is exact: (step + 1) % exact_every == 0."""
        return self.exact_every is not None and (step + 1) % self.exact_every == 0

    def _lazy_scaler(self, group: dict[str, Any], p: torch.Tensor) -> float:
        if self.lr_scaler > 0:
            return self.lr_scaler
        hidden = group.get("hidden") or p.shape[0]
        return group.get("rank", p.shape[1]) / hidden

    def _adam(self, group: dict[str, Any], p: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """Update p's moments with its gradient; return (m / (sqrt(v) + eps), eta_t) or None."""
        if p.grad is None:
            return None
        if p.grad.is_sparse:
            raise RuntimeError("LOROAdamW does not take sparse gradients: use dense gradients")
        state = self.state[p]
        if not state:
            self._init_state(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = int(state["step"].item())
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_l, v_l, g_l = local_tensor(m), local_tensor(v), local_tensor(p.grad)
        m_l.mul_(beta1).add_(g_l, alpha=1.0 - beta1)
        v_l.mul_(beta2).addcmul_(g_l, g_l, value=1.0 - beta2)
        eta = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        return m / (v.sqrt() + group["eps"]), eta

    def _init_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _decay(group: dict[str, Any], p: torch.Tensor, rate: float) -> None:
        if group["weight_decay"] > 0.0:
            local_tensor(p).mul_(1.0 - rate * group["weight_decay"])

    def _regular_step(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            result = self._adam(group, p)
            if result is None:
                continue
            update, eta = result
            local_tensor(p).add_(local_tensor(update), alpha=-eta)
            self._decay(group, p, group["lr"])

    def _pair_step(self, group: dict[str, Any], exact: bool) -> None:
        weight_in, weight_out = group["params"]
        if weight_in.grad is None or weight_out.grad is None:
            return
        (u_in, eta), (u_out, _) = self._adam(group, weight_in), self._adam(group, weight_out)
        if not exact:
            for p, update in ((weight_in, u_in), (weight_out, u_out)):
                scaler = self._lazy_scaler(group, p)
                local_tensor(p).add_(local_tensor(update), alpha=-eta * scaler)
                self._decay(group, p, eta if self.reference_quirks else group["lr"])
            return
        new_out, new_in = loro_exact_update(
            full_tensor(weight_out),
            full_tensor(weight_in),
            full_tensor(u_out),
            full_tensor(u_in),
            eta,
        )
        local_tensor(weight_out).copy_(local_part(new_out, weight_out))
        local_tensor(weight_in).copy_(local_part(new_in, weight_in))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, *, exact: bool | None = None):
        """One step: lazy or exact (by the step counter unless `exact` is given), then, after an
        exact step, the Adam states reset as `reset_states` says."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if exact is None:
            exact = self.is_exact_step(self.steps_taken)
        for group in self.param_groups:
            if group["loro_pair"]:
                self._pair_step(group, exact)
            else:
                self._regular_step(group)
            group["loro_step"] += 1
        if exact and self.reset_states != "none":
            self.reset_adam_states(low_rank_only=self.reset_states == "low_rank")
        return loss

    def reset_adam_states(self, low_rank_only: bool = False) -> None:
        """Zero the moments and the bias-correction step of every parameter (or of the factors)."""
        for group in self.param_groups:
            if low_rank_only and not group["loro_pair"]:
                continue
            for p in group["params"]:
                if self.state.get(p):
                    self._init_state(p)


class LOROConfig(LayerwiseConfig):
    """LORO's hyper-parameters; defaults = the released scripts (scripts/loro_c4/llama_60m.sh:
    lr 0.01, exact step and state reset every 500 steps, rank/hidden lazy scaler, weight decay 0,
    run_c4.py's re-warm-up of 5 steps) and LOROAdamW's constructor (a test keeps them equal).
    The 1B script uses lr 5e-3 and exact_every 200."""

    lr: float = Field(1e-2, gt=0.0, allow_inf_nan=False)  # peak learning rate
    betas: AdamBetas = (0.9, 0.999)  # Adam moment decay rates
    eps: float = Field(1e-6, gt=0.0, allow_inf_nan=False)  # added to sqrt(v) (not bias-corrected)
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)  # decoupled, after the step
    exact_every: int | None = Field(500, ge=1)  # exact Riemannian step every K steps; None: never
    lr_scaler: float = -1.0  # lazy steps' LR factor: -1 = rank / hidden_size; > 0: that factor
    reset_states: ResetStates = "all"  # Adam states reset after each exact step
    # LR re-warm-up after each reset, linear over this many steps (run_c4.py --cosine_restart_warmup)
    restart_warmup_steps: int = Field(5, ge=0)
    reference_quirks: bool = False  # lazy weight decay at the bias-corrected step size

    def param_groups(
        self, model: nn.Module, weight_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """`loro_param_groups(model, weight_decay)` (default: this config's weight decay)."""
        return loro_param_groups(model, self.weight_decay if weight_decay is None else weight_decay)

    def build(
        self,
        param_groups: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        *,
        total_steps: int | None = None,
    ) -> LOROAdamW:
        """`LOROAdamW` over `param_groups` with this config; `total_steps` is unused (the schedule
        is the run's, times `schedule_factor`)."""
        del total_steps
        return LOROAdamW(
            param_groups,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
            exact_every=self.exact_every,
            lr_scaler=self.lr_scaler,
            reset_states=self.reset_states,
            reference_quirks=self.reference_quirks,
        )

    def schedule_factor(self, step: int) -> float:
        """The LR multiplier of the re-warm-up after each exact step, on top of the run's warm-up +
        cosine; `step` = updates completed before this one (a LambdaLR's index). The exact steps
        are the updates with index K-1, 2K-1, ... (K = exact_every), so the restart cycle of the
        update with index s >= K is c = s mod K and its factor is c / R for c < R (R =
        restart_warmup_steps: 0 on the first update after a reset, as the reference's
        1e-6-floored ramp), else 1. 1.0 always when exact_every is None, R = 0 or
        reset_states == "none" (no reset to warm up after)."""
        k, r = self.exact_every, self.restart_warmup_steps
        if k is None or r == 0 or self.reset_states == "none" or step < k:
            return 1.0
        cycle = step % k
        return cycle / r if cycle < r else 1.0
