"""Dynamic sparse training (DST): the prune / regrow engine of NeuroTrails (Grooten et al.,
arXiv 2505.17909), RigL-style growth (Evci et al., 2020) and SEFT's index-level drop / grow.

Every masked weight W_l keeps a fixed number of active entries, target_l = ceil(d_l * N_l), with
the per-layer densities d_l from ERK (Evci et al.): d_l = eps * (sum of dims) / (prod of dims), eps
solved so that sum_l d_l N_l = d * N. After each optimizer step W <- W * M; every `update_every`
steps t, with the cosine-decayed fraction

    p(t) = p_T + (p_0 - p_T) * (1 + cos(pi * t / T)) / 2        (p_0 = 0.5, p_T = 0.005)

(T: the run's optimizer steps; a resume with another T follows the new T from the resumed step on,
as the LR schedule does)

    prune:  drop the ceil(p * n) active entries of smallest |w| ("magnitude"), or keep a sample of
            ceil(n * (1 - p)) of the n active entries drawn without replacement with P proportional
            to |w|^T ("soft", T = 3, the LM script's magnitude_soft, after Zhang et al. arXiv
            2501.19107)
    regrow: activate the target_l - kept inactive positions of largest |dL/dW| ("gradient", RigL;
            just-pruned positions included), or uniformly random ones ("random", SET)

Clean mode (default): exactly target_l initial entries; grown entries start at 0 with zeroed
optimizer moments. `reference_quirks=True` reproduces the official code: Bernoulli initial masks
(per-layer targets are then ceil((c_l / N_l) * N_l) of the drawn count c_l, computed in floats as
the official code does: c_l, or c_l + 1 where the product rounds up past c_l, so such a tensor
holds c_l + 1 entries after its first update), a weight pruned and regrown in the same update keeps
its value, optimizer moments of grown entries are kept, hard pruning drops every entry tied at the
threshold, and the soft sampler leaves the mask unchanged when fewer than `keep` entries are
nonzero.

Distributed: masks are full bool tensors computed identically on every rank (random draws use
generators seeded from (seed, step, parameter name), never the global RNG; DDP gradients are
already averaged; FSDP2 DTensor weights and gradients are gathered with `full_tensor()` for the
update, and each rank applies its own part of the mask).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from layerwise_core import LayerwiseConfig, is_dtensor, local_part
from layerwise_core.distributed import full_tensor, local_tensor

__all__ = [
    "DSTConfig",
    "DynamicSparsity",
    "cosine_prune_fraction",
    "drop_and_grow",
    "drop_smallest",
    "erk_densities",
    "grow_largest",
    "prune_and_regrow",
    "soft_magnitude_keep",
    "uniform_densities",
]


# ---------------------------------------------------------------------------------------------
# Per-layer densities and the prune-fraction schedule


def erk_densities(
    shapes: Sequence[Sequence[int]],
    density: float,
    *,
    dense: Collection[int] = (),
    power: float = 1.0,
) -> list[float]:
    """Erdos-Renyi-Kernel densities: d_l = eps * r_l with r_l = (sum of dims / prod of dims)^power.

    eps solves eps * sum_{l not in D} r_l N_l = d * N - sum_{l in D} N_l, D the dense tensors
    (`dense`: indices forced dense). While some eps * r_l > 1, every tensor tied at the largest r
    joins D (as the official init does) and eps is solved again. So sum_l d_l N_l = d * N exactly
    (up to float rounding) and every d_l <= 1.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    sizes = [math.prod(int(s) for s in shape) for shape in shapes]
    raw = [(sum(int(s) for s in shape) / n) ** power for shape, n in zip(shapes, sizes)]
    dense_set = {int(i) for i in dense}
    total = sum(sizes)
    while True:
        sparse = [i for i in range(len(sizes)) if i not in dense_set]
        if not sparse:
            break
        rhs = density * total - sum(sizes[i] for i in dense_set)
        eps = rhs / sum(raw[i] * sizes[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1:
            break
        dense_set |= {i for i in sparse if raw[i] == top}
    if sum(sizes[i] for i in dense_set) > density * total * (1 + 1e-12):
        raise ValueError(
            f"the tensors forced dense hold more than density={density} of all weights: "
            "raise the density or keep fewer tensors dense"
        )
    return [1.0 if i in dense_set else eps * raw[i] for i in range(len(sizes))]


def uniform_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """The same density d for every tensor."""
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    return [float(density)] * len(shapes)


def cosine_prune_fraction(
    step: int, total_steps: int, initial: float = 0.5, final: float = 0.005
) -> float:
    """p(t) = final + (initial - final) * (1 + cos(pi * t / T)) / 2, t clamped to [0, T]: the
    official CosineDecay (torch's CosineAnnealingLR with eta_min = 0.005), stepped once per
    optimizer update."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    t = min(max(step, 0), total_steps)
    return final + (initial - final) * (1 + math.cos(math.pi * t / total_steps)) / 2


# ---------------------------------------------------------------------------------------------
# Index-level primitives (shared with SEFT)


def drop_smallest(values: Tensor, n: int) -> Tensor:
    """Bool keep-mask over `values`: False at the n entries of smallest |value|."""
    keep = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
    if n > 0:
        keep[torch.topk(values.abs().reshape(-1), n, largest=False).indices] = False
    return keep


def grow_largest(scores: Tensor, n: int) -> Tensor:
    """Indices (into `scores`) of the n largest scores."""
    return torch.topk(scores.reshape(-1), n).indices


def drop_and_grow(
    indices: Tensor,
    values: Tensor,
    candidates: Tensor,
    candidate_scores: Tensor,
    n: int,
) -> tuple[Tensor, Tensor]:
    """SEFT's step: drop the n entries of smallest |values|; grow the n candidates of largest score.

    `candidates` are positions outside the support. Fewer candidates than n drop fewer entries, so
    the support keeps its size. Returns (new sorted support, which candidates were grown).
    """
    n = min(n, candidates.numel(), indices.numel())
    if n == 0:
        return indices, torch.zeros(0, dtype=torch.long, device=indices.device)
    keep = drop_smallest(values, n)
    chosen = grow_largest(candidate_scores, n)
    return torch.sort(torch.cat([indices[keep], candidates[chosen]])).values, chosen


def soft_magnitude_keep(
    scores: Tensor, keep: int, temperature: float, generator: torch.Generator | None = None
) -> Tensor:
    """Indices of `keep` entries of `scores` (>= 0) sampled without replacement, P proportional
    to score^T (the official magnitude_soft prune, after Zhang et al. arXiv 2501.19107).

    Sequential sampling without replacement equals the top-`keep` of T log s_i + Gumbel_i
    (Gumbel-top-k; Kool et al. 2019), which works for any number of entries (torch.multinomial
    stops at 2^24). Zero scores are never kept: with fewer than `keep` nonzero scores, all of them
    are returned.
    """
    flat = scores.reshape(-1).float()
    nonzero = flat > 0
    keep = min(int(keep), int(nonzero.sum()))
    if keep <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    uniform = torch.rand(flat.shape, generator=generator, device=flat.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
    keys = temperature * torch.log(flat) + gumbel  # log 0 = -inf: never kept
    keys = torch.where(nonzero, keys, torch.full_like(keys, -math.inf))
    return torch.topk(keys, keep).indices


def prune_and_regrow(
    weight: Tensor,
    mask: Tensor,
    grad: Tensor | None,
    *,
    target: int,
    fraction: float,
    prune: Literal["magnitude", "soft"] = "magnitude",
    growth: Literal["gradient", "random"] = "gradient",
    temperature: float = 3.0,
    generator: torch.Generator | None = None,
    reference_quirks: bool = False,
) -> tuple[Tensor, Tensor]:
    """One topology update of one tensor (full, not sharded): returns (new bool mask, grown).

    Prune drops the ceil(p n) smallest of the n active entries by |W * M| ("magnitude"), or keeps
    a sample of ceil(n (1 - p)) of them ("soft"); regrow activates target - kept positions outside the kept set, just-pruned ones
    included, by largest |grad| or uniformly at random. `grown` marks positions active now that
    were not kept (a pruned-and-regrown position counts as grown). With `reference_quirks`, hard
    pruning drops every entry tied at the threshold |w| (the official `> threshold`) and soft
    pruning leaves the mask unchanged when fewer than `keep` entries are nonzero.
    """
    mask = mask.to(torch.bool)
    shape = mask.shape
    flat_mask = mask.reshape(-1)
    score = (weight.detach() * mask).abs().reshape(-1)
    active = flat_mask.nonzero().squeeze(1)
    n = active.numel()
    kept = torch.zeros_like(flat_mask)
    if prune == "magnitude":
        drop = math.ceil(fraction * n)
        if reference_quirks and drop > 0:
            zeros = flat_mask.numel() - n
            threshold = torch.sort(score).values[zeros + drop - 1]
            kept = score > threshold
        else:
            kept[active[drop_smallest(score[active], min(drop, n))]] = True
    elif prune == "soft":
        keep = math.ceil(n * (1 - fraction))
        if reference_quirks and int((score > 0).sum()) < keep:
            kept = flat_mask.clone()
        else:
            kept[soft_magnitude_keep(score, keep, temperature, generator)] = True
    else:
        raise ValueError(f"prune must be 'magnitude' or 'soft', got {prune!r}")
    regrow = target - int(kept.sum())
    if regrow < 0:
        raise ValueError(f"the prune kept {int(kept.sum())} entries, more than the target {target}")
    new = kept.clone()
    if regrow > 0:
        outside = (~kept).nonzero().squeeze(1)
        regrow = min(regrow, outside.numel())
        if growth == "gradient":
            if grad is None:
                raise ValueError("growth='gradient' needs the gradient: pass grad=weight.grad")
            chosen = grow_largest(grad.detach().abs().reshape(-1)[outside], regrow)
        elif growth == "random":
            device = generator.device if generator is not None else outside.device
            chosen = torch.randperm(outside.numel(), generator=generator, device=device)[:regrow]
            chosen = chosen.to(outside.device)
        else:
            raise ValueError(f"growth must be 'gradient' or 'random', got {growth!r}")
        new[outside[chosen]] = True
    return new.reshape(shape), (new & ~kept).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Config and the engine


class DSTConfig(LayerwiseConfig):
    """Dynamic sparse training (the `sparsity:` section of `layerwise pretrain`). Defaults: the
    NeuroTrails LM script (magnitude_soft prune, T = 3, gradient growth, p0 = 0.5 -> 0.005,
    ERK, an update every 50 optimizer steps as the script sets it; the official code's own
    argument default is 100), except `density` (1.0: off)."""

    density: float = Field(1.0, gt=0, le=1)  # d: global fraction of active masked weights; 1: off
    init: Literal["erk", "uniform"] = "erk"  # per-layer densities: ERK or d everywhere
    erk_power: float = Field(1.0, gt=0)  # r_l = (sum dims / prod dims)^power
    dense_embeddings: bool = False  # True: embeddings and output heads stay dense (official: off)
    update_every: int | None = Field(
        50, ge=1
    )  # topology update every dT optimizer steps; None: static
    prune: Literal["magnitude", "soft"] = "soft"  # keep largest |w|, or sample P ~ |w|^T
    temperature: float = Field(3.0, gt=0)  # T of the soft prune
    growth: Literal["gradient", "random"] = "gradient"  # RigL (largest |grad|) or SET (random)
    prune_fraction: float = Field(0.5, ge=0, le=1)  # p0 of the cosine schedule
    final_prune_fraction: float = Field(0.005, ge=0, le=1)  # p at the end of training
    # True: Bernoulli initial masks, pruned-and-regrown weights keep their value, optimizer moments
    # of grown entries kept (the official code); False: exact counts, grown entries restart at 0
    reference_quirks: bool = False

    @model_validator(mode="after")
    def _fractions_decay(self) -> DSTConfig:
        if self.final_prune_fraction > self.prune_fraction:
            raise ValueError(
                f"final_prune_fraction={self.final_prune_fraction} exceeds prune_fraction="
                f"{self.prune_fraction}: the schedule decays, lower final_prune_fraction"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when some weights are sparse (density < 1)."""
        return self.density < 1


def _stable_seed(*parts: object) -> int:
    """A seed from `parts` that is the same in every process (Python's hash() of str is not)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(device: torch.device, *parts: object) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_stable_seed(*parts))


def _is_output_head(module_name: str) -> bool:
    return module_name.split(".")[-1] == "lm_head"


def _optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor) -> dict:
    """The optimizer's state of `param`, through wrappers that hold the torch optimizer in
    `.optimizer` (e.g. accelerate's)."""
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return getattr(inner, "state", {}).get(param, {})


@torch.no_grad()
def _multiply_(tensor: Tensor, full_mask: Tensor) -> None:
    """tensor *= mask, for a plain tensor or this rank's shard of a DTensor."""
    local = local_tensor(tensor)
    local.mul_(local_part(full_mask, tensor).to(local.dtype))


@torch.no_grad()
def _zero_(tensor: Tensor, full_positions: Tensor) -> None:
    """tensor[positions] = 0, for a plain tensor or this rank's shard of a DTensor."""
    local = local_tensor(tensor)
    local.masked_fill_(local_part(full_positions, tensor), 0)


class DynamicSparsity:
    """Masks, their initial layout and their prune / regrow updates for one model.

    Masks every 2-D weight of nn.Linear and nn.Embedding modules (norms and biases stay dense);
    `dense_embeddings` leaves nn.Embedding and output heads (`lm_head`, `heads.*.lm_head`) dense;
    `include(name, param)` narrows the set further. Call `step(optimizer)` after every
    `optimizer.step()` and before `zero_grad()` (growth reads the gradient), and `skip()` for an
    optimizer step that was skipped (fp16 overflow), so that `step_count` stays the run's step.

    `total_steps` is T of the cosine prune schedule. It is saved with the state; loading a state
    saved with another T (a resume that changed the run's length) keeps this engine's T, so p(t)
    follows the new length from the resumed step on, as the LR schedule's cosine does (both are
    functions of the absolute step and the run's current length; p jumps at the resume).
    """

    def __init__(
        self,
        model: nn.Module,
        config: DSTConfig,
        total_steps: int,
        *,
        seed: int = 0,
        include: Callable[[str, nn.Parameter], bool] | None = None,
    ):
        if total_steps < 1:
            raise ValueError(
                f"total_steps must be >= 1 (the cosine schedule's T), got {total_steps}"
            )
        self.config = config
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.step_count = 0
        self.loaded_total_steps: int | None = None  # T of a loaded state (load_state_dict)
        self.params: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        if config.enabled:
            for module_name, module in model.named_modules():
                if not isinstance(module, nn.Linear | nn.Embedding):
                    continue
                param = module.weight
                if param is None or id(param) in seen or param.dim() != 2:
                    continue
                embedding = isinstance(module, nn.Embedding) or _is_output_head(module_name)
                if config.dense_embeddings and embedding:
                    continue
                name = f"{module_name}.weight" if module_name else "weight"
                if include is not None and not include(name, param):
                    continue
                seen.add(id(param))
                self.params[name] = param
        self.names: list[str] = list(self.params)
        shapes = [tuple(p.shape) for p in self.params.values()]  # global shapes under FSDP2
        if not self.names:
            layer = []
        elif config.init == "erk":
            layer = erk_densities(shapes, config.density, power=config.erk_power)
        else:
            layer = uniform_densities(shapes, config.density)
        self.masks: dict[str, Tensor] = {}
        self.densities: dict[str, float] = {}
        self.targets: dict[str, int] = {}
        for name, d in zip(self.names, layer):
            param = self.params[name]
            numel = param.numel()
            gen = _generator(torch.device("cpu"), self.seed, 0, name)
            if config.reference_quirks:  # official: Bernoulli(d_l) per element
                mask = torch.rand(tuple(param.shape), generator=gen) < d
                self.densities[name] = int(mask.sum()) / numel
            else:  # exactly ceil(d_l N_l) entries, uniformly placed
                count = min(math.ceil(d * numel), numel)
                mask = torch.zeros(numel, dtype=torch.bool)
                mask[torch.randperm(numel, generator=gen)[:count]] = True
                mask = mask.reshape(tuple(param.shape))
                self.densities[name] = d
            # quirks: ceil((count / N) * N) in floats, as the official code: count, or count + 1
            self.targets[name] = min(math.ceil(self.densities[name] * numel), numel)
            self.masks[name] = mask.to(local_tensor(param).device)
        self.apply()

    # -- masks ----------------------------------------------------------------------------------

    @torch.no_grad()
    def apply(self) -> None:
        """W *= M for every masked parameter."""
        for name, param in self.params.items():
            _multiply_(param.data if not is_dtensor(param) else param, self.masks[name])

    def prune_fraction(self, step: int | None = None) -> float:
        """p(t) of the cosine schedule at optimizer step t (default: the current step)."""
        t = self.step_count if step is None else step
        return cosine_prune_fraction(
            t, self.total_steps, self.config.prune_fraction, self.config.final_prune_fraction
        )

    def layer_densities(self) -> dict[str, float]:
        """nnz(M_l) / N_l per masked tensor."""
        return {name: int(m.sum()) / m.numel() for name, m in self.masks.items()}

    def global_density(self) -> float:
        """sum_l nnz(M_l) / sum_l N_l (1.0 with no masks)."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total if total else 1.0

    # -- training -------------------------------------------------------------------------------

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """After optimizer.step(), before zero_grad(): count the step, apply the masks, and on
        every `update_every`-th step update the topology (then apply again). Returns None, or on
        update steps {"prune_fraction": p, "changed/<name>": ..., "density/<name>": ...}."""
        self.step_count += 1
        self.apply()
        every = self.config.update_every
        if not self.masks or every is None or self.step_count % every != 0:
            return None
        return self.update(optimizer)

    def skip(self) -> None:
        """Count an optimizer step that was skipped (fp16: the scaler found inf / NaN gradients
        and left the weights unchanged): step_count += 1, so p(t) and the update cadence follow
        the run's step (as the LR scheduler, which steps on skipped steps too). Nothing else: the
        weights did not change, so W *= M still holds, and a topology update due at this step is
        not made (its gradients overflowed); the next one comes `update_every` steps later."""
        self.step_count += 1

    @torch.no_grad()
    def update(self, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """One prune / regrow of every masked tensor at the current step's fraction."""
        cfg = self.config
        p = self.prune_fraction()
        record: dict[str, float] = {"prune_fraction": p}
        for name, param in self.params.items():
            weight = full_tensor(param.detach())  # collective under FSDP2: same order everywhere
            grad = None
            if cfg.growth == "gradient":
                if param.grad is None:
                    raise RuntimeError(
                        f"DynamicSparsity.step: {name} has no gradient; call step() after "
                        "optimizer.step() and before optimizer.zero_grad()"
                    )
                grad = full_tensor(param.grad)
            old = self.masks[name]
            gen = _generator(old.device, self.seed, self.step_count, name)
            new, grown = prune_and_regrow(
                weight,
                old,
                grad,
                target=self.targets[name],
                fraction=p,
                prune=cfg.prune,
                growth=cfg.growth,
                temperature=cfg.temperature,
                generator=gen,
                reference_quirks=cfg.reference_quirks,
            )
            if not cfg.reference_quirks:  # grown entries restart at 0 with zeroed moments
                target = param if is_dtensor(param) else param.data
                _zero_(target, grown)
                if optimizer is not None:
                    for value in _optimizer_state(optimizer, param).values():
                        if isinstance(value, Tensor) and tuple(value.shape) == tuple(param.shape):
                            _zero_(value, grown)
            record[f"changed/{name}"] = int((new != old).sum())
            record[f"density/{name}"] = int(new.sum()) / new.numel()
            self.masks[name] = new
        self.apply()
        return record

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{"step_count", "total_steps", "masks": {name: bool tensor}, "densities", "targets"}."""
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "masks": {name: m.detach().cpu().clone() for name, m in self.masks.items()},
            "densities": dict(self.densities),
            "targets": dict(self.targets),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore masks, densities, targets and the step count bit for bit, then apply().

        `total_steps` stays this engine's (the resumed run's length): a state saved with another
        T (its "total_steps"; absent in states saved before it was stored) continues on the new
        schedule, p(t) = cosine_prune_fraction(t, new T) from the loaded step on. The saved T is
        kept as `loaded_total_steps` (None when the state does not hold it)."""
        names = set(state["masks"])
        if names != set(self.masks):
            missing, extra = sorted(set(self.masks) - names), sorted(names - set(self.masks))
            raise ValueError(
                f"DynamicSparsity.load_state_dict: masked tensors differ (missing {missing}, "
                f"unexpected {extra}): build the model and DSTConfig of the saved run"
            )
        for name, mask in state["masks"].items():
            if tuple(mask.shape) != tuple(self.masks[name].shape):
                raise ValueError(
                    f"DynamicSparsity.load_state_dict: mask {name} has shape "
                    f"{tuple(mask.shape)}, the parameter {tuple(self.masks[name].shape)}"
                )
            self.masks[name] = mask.to(dtype=torch.bool, device=self.masks[name].device).clone()
        self.densities = {name: float(d) for name, d in state["densities"].items()}
        self.targets = {name: int(t) for name, t in state["targets"].items()}
        self.step_count = int(state["step_count"])
        saved_total = state.get("total_steps")
        self.loaded_total_steps = None if saved_total is None else int(saved_total)
        self.apply()
