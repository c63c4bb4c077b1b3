"""Sparsity measures of "When Does Sparsity Mitigate the Curse of Depth in LLMs" (Muhtar et al.,
ICML 2026; spec studies.md A.3.8). The README's analysis scripts are absent from the official
repository, so weights and attention follow the spec's definitions; the expert load is the
official `compute_layer_score.py` one.

- `weight_sparsity`: s_W(τ) = mean 1[|w| < τ·RMS(W)] per weight matrix (each expert's matrix of a
  fused 3-D MoE tensor on its own), τ ∈ {0.01, 0.05, 0.1}; weight density = 1 − s_W.
- `attention_sparsity` / `attention_entropy_stats`: for query t (0-based among real tokens, t ≥
  `min_query`) of a causal model, H = −Σ_j A_tj log A_tj over its t+1 keys, Ĥ = H / log(t+1),
  k_eff = exp(H), density k_eff/(t+1), and the mass on the top ⌈10%·(t+1)⌉ keys; averaged over
  queries, heads and windows, per layer (eager attention probabilities).
- `expert_load` / `expert_load_from_selections`: per-expert load f_e = share of the top-k
  selections routed to expert e, balance = max(0, 1 − std(f)/mean(f)) (population std).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from depth_probe.depth_usage import _as_dict, _batches, _device, _inputs, _mask
from layerwise_core import TokenInputs, find_decoder

__all__ = [
    "AttentionSparsity",
    "ExpertLoad",
    "WeightSparsity",
    "attention_entropy_stats",
    "attention_sparsity",
    "eager_attention",
    "expert_load",
    "expert_load_from_selections",
    "find_routers",
    "weight_sparsity",
]


# --------------------------------------------------------------------------- weights


@dataclass
class WeightSparsity:
    """s_W(τ) per matrix: values[m, k] for matrix names[m] (block layer[m]) at thresholds[k];
    per_layer[l, k] = mean over block l's matrices; mean[k] = mean over all matrices."""

    thresholds: list[float]
    names: list[str]
    layer: list[int]
    values: torch.Tensor
    per_layer: torch.Tensor
    mean: torch.Tensor

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _matrix_sparsity(weight: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    w = weight.detach().float().reshape(-1, weight.shape[-2], weight.shape[-1])  # [experts, o, i]
    rms = w.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    return torch.stack([(w.abs() < t * rms).double().mean() for t in thresholds])


@torch.no_grad()
def weight_sparsity(
    model: nn.Module, thresholds: Sequence[float] = (0.01, 0.05, 0.1)
) -> WeightSparsity:
    """Fraction of near-zero weights, s_W(τ) = mean 1[|w| < τ·RMS(W)], of every >= 2-D parameter of
    the decoder blocks (attention, MLP / experts, routers; norms are 1-D and left out). A fused
    [E, out, in] expert tensor counts as E matrices, each with its own RMS, averaged."""
    dmap = find_decoder(model)
    names, layers, values = [], [], []
    for layer in dmap:
        for name, param in layer.block.named_parameters():
            if param.dim() < 2:
                continue
            names.append(f"{layer.index}.{name}")
            layers.append(layer.index)
            values.append(_matrix_sparsity(param, thresholds))
    if not values:
        raise ValueError("weight_sparsity: the decoder blocks hold no weight matrix")
    table = torch.stack(values)
    index = torch.tensor(layers)
    per_layer = torch.stack([table[index == i].mean(0) for i in range(len(dmap))])
    return WeightSparsity(
        thresholds=[float(t) for t in thresholds],
        names=names,
        layer=layers,
        values=table,
        per_layer=per_layer,
        mean=table.mean(0),
    )


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionSparsity:
    """Per layer ([L] float64, means over counted queries, heads and windows): entropy H,
    normalized_entropy Ĥ = H/log(t+1), effective_keys k_eff = exp(H), density k_eff/(t+1),
    top_mass (mass on the top `top_fraction` of keys); per_head_* are [L, heads]."""

    entropy: torch.Tensor
    normalized_entropy: torch.Tensor
    effective_keys: torch.Tensor
    density: torch.Tensor
    top_mass: torch.Tensor
    per_head_normalized_entropy: torch.Tensor
    queries: int
    min_query: int
    top_fraction: float

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def attention_entropy_stats(
    probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_query: int = 64,
    top_fraction: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Per-head sums over counted queries of H, Ĥ, k_eff, k_eff/(t+1) and top mass for causal
    attention probabilities `probs` [B, H, T, T] (rows: queries) with real-token mask [B, T].
    Query t is 0-based among real tokens (t + 1 keys visible); queries with t < min_query are
    left out. Returns {"entropy", "normalized_entropy", "effective_keys", "density", "top_mass"}
    as [heads] float64 sums, and "queries" (the count)."""
    if min_query < 1:
        raise ValueError("attention_entropy_stats: min_query must be >= 1 (log(t+1) > 0)")
    batch, heads, length, _ = probs.shape
    real = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask.bool().cpu()
    p = probs.detach().double().cpu()
    keys = real.long().cumsum(-1)  # t + 1 for a real query
    counted = real & (keys - 1 >= min_query)  # [B, T]
    if not bool(counted.any()):
        raise ValueError(
            f"attention_entropy_stats: no query at position >= min_query={min_query}; use longer "
            "windows or a smaller min_query"
        )
    entropy = -torch.xlogy(p, p).sum(-1)  # [B, H, T]
    n = keys.double().clamp_min(1)[:, None, :].expand(batch, heads, length)
    normalized = entropy / n.log().clamp_min(1e-12)
    k_eff = entropy.exp()
    top_k = torch.ceil(top_fraction * n).long().clamp_min(1)
    sorted_p = p.sort(dim=-1, descending=True).values.cumsum(-1)
    top_mass = sorted_p.gather(-1, (top_k - 1).unsqueeze(-1)).squeeze(-1)
    weight = counted[:, None, :].double()
    out = {
        "entropy": (entropy * weight).sum(dim=(0, 2)),
        "normalized_entropy": (normalized * weight).sum(dim=(0, 2)),
        "effective_keys": (k_eff * weight).sum(dim=(0, 2)),
        "density": (k_eff / n * weight).sum(dim=(0, 2)),
        "top_mass": (top_mass * weight).sum(dim=(0, 2)),
        "queries": counted.sum(),
    }
    return out


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the `with` block the model uses HF's "eager" attention (which materialises the
    probabilities for `output_attentions=True`); the previous implementation is restored on exit."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def attention_sparsity(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    min_query: int = 64,
    top_fraction: float = 0.1,
    batch_size: int | None = None,
) -> AttentionSparsity:
    """Attention entropy, effective keys and top-10% mass per layer (module docstring) of a causal
    LM, from eager attention probabilities (`output_attentions=True`)."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "attention_sparsity")
    device = _device(model)
    totals: list[dict[str, torch.Tensor]] | None = None
    queries = 0
    with eager_attention(model):
        for ids, mask in _batches(input_ids, attention_mask, batch_size):
            kwargs: dict[str, Any] = {"use_cache": False, "output_attentions": True}
            if mask is not None:
                kwargs["attention_mask"] = mask.to(device)
            attentions = model(ids.to(device), **kwargs).attentions
            if not attentions or attentions[0] is None:
                raise ValueError(
                    "attention_sparsity: the model returned no attention probabilities; it needs "
                    "an eager attention path (config._attn_implementation='eager')"
                )
            real = _mask(ids, mask)
            stats = [
                attention_entropy_stats(a, real, min_query=min_query, top_fraction=top_fraction)
                for a in attentions
            ]
            queries += int(stats[0]["queries"])
            if totals is None:
                totals = stats
            else:
                for total, new in zip(totals, stats):
                    for key in total:
                        total[key] = total[key] + new[key]
    assert totals is not None
    heads_count = queries  # per head: number of counted queries

    def layer_mean(key: str) -> torch.Tensor:
        return torch.stack([t[key].mean() / heads_count for t in totals])

    return AttentionSparsity(
        entropy=layer_mean("entropy"),
        normalized_entropy=layer_mean("normalized_entropy"),
        effective_keys=layer_mean("effective_keys"),
        density=layer_mean("density"),
        top_mass=layer_mean("top_mass"),
        per_head_normalized_entropy=torch.stack(
            [t["normalized_entropy"] / heads_count for t in totals]
        ),
        queries=queries,
        min_query=min_query,
        top_fraction=top_fraction,
    )


# --------------------------------------------------------------------------- experts


@dataclass
class ExpertLoad:
    """Per MoE block (layers[i]): load[i, e] = share of the top-k selections that went to expert e
    (rows sum to 1), balance[i] = max(0, 1 − std(load)/mean(load)); mean_balance over blocks."""

    layers: list[int]
    counts: torch.Tensor
    load: torch.Tensor
    balance: torch.Tensor
    mean_balance: float

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def expert_load_from_selections(
    selections: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(counts [E], load f [E], balance) of expert indices `selections` (any shape, e.g.
    [tokens, k]): f_e = counts_e / Σ counts, balance = max(0, 1 − std(f)/mean(f)) with the
    population std (numpy's default, as the official script)."""
    flat = selections.reshape(-1).long().cpu()
    flat = flat[(flat >= 0) & (flat < num_experts)]
    counts = torch.bincount(flat, minlength=num_experts).double()
    total = counts.sum()
    load = counts / total if total > 0 else torch.zeros(num_experts, dtype=torch.float64)
    mean = load.mean()
    balance = max(0.0, 1.0 - float(load.std(correction=0) / mean)) if mean > 0 else 0.0
    return counts, load, balance


def _num_experts_of(config: Any) -> int | None:
    for name in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_routers(model: nn.Module) -> dict[int, list[nn.Module]]:
    """Expert routers of each decoder block, found generically: a submodule of the block's MLP
    with a `top_k` attribute and a 2-D `weight` [E, hidden] (transformers' Mixtral / Qwen-MoE
    TopKRouter, coe-moe's routers), or an `nn.Linear` named `gate`/`router` with E outputs
    (E from the config's num_local_experts / num_experts)."""
    dmap = find_decoder(model)
    hidden = dmap.embed_tokens.weight.shape[-1]
    experts = _num_experts_of(getattr(model, "config", None))
    found: dict[int, list[nn.Module]] = {}
    for layer in dmap:
        mlp = layer.mlp
        if mlp is None:
            continue
        routers = []
        for name, module in mlp.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                continue
            if (hasattr(module, "top_k") and weight.shape[1] == hidden) or (
                isinstance(module, nn.Linear)
                and name.split(".")[-1] in ("gate", "router")
                and experts is not None
                and module.out_features == experts
            ):
                routers.append(module)
        if routers:
            found[layer.index] = routers
    return found


@torch.no_grad()
def expert_load(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    batch_size: int | None = None,
) -> ExpertLoad:
    """Per-expert load and balance of every MoE block (module docstring), from forward hooks on
    the routers (`find_routers`): the selected expert indices when the router returns
    (logits, scores, indices), else the top-k of its logits (k = `top_k` or the router's /
    config's num_experts_per_tok). Padding tokens are left out. Several routers in one block
    (Chain-of-Experts iterations) are pooled."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "expert_load")
    routers = find_routers(model)
    if not routers:
        raise ValueError(
            "expert_load: no expert router found (a module with `top_k` and a 2-D [E, hidden] "
            "weight); is this a MoE model?"
        )
    config = getattr(model, "config", None)
    default_k = top_k or getattr(config, "num_experts_per_tok", None)
    device = _device(model)
    selected: dict[int, list[torch.Tensor]] = {i: [] for i in routers}
    sizes: dict[int, int] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(index: int, router: nn.Module):
        def run(module, args, output):
            if (
                isinstance(output, (tuple, list))
                and len(output) >= 3
                and not output[2].is_floating_point()
            ):
                chosen = output[2]
            else:
                logits = output[0] if isinstance(output, (tuple, list)) else output
                k = top_k or getattr(router, "top_k", None) or default_k
                if k is None:
                    raise ValueError("expert_load: pass top_k (the router does not say it)")
                chosen = logits.topk(int(k), dim=-1).indices
            chosen = chosen.reshape(-1, chosen.shape[-1])
            real = current["mask"].reshape(-1)
            if real.numel() == chosen.shape[0]:
                chosen = chosen[real.to(chosen.device)]
            selected[index].append(chosen.cpu())

        return run

    handles = []
    for index, modules in routers.items():
        sizes[index] = int(modules[0].weight.shape[0])
        handles += [m.register_forward_hook(hook(index, m)) for m in modules]
    try:
        for ids, mask in _batches(input_ids, attention_mask, batch_size):
            current["mask"] = _mask(ids, mask)
            kwargs: dict[str, Any] = {"use_cache": False}
            if mask is not None:
                kwargs["attention_mask"] = mask.to(device)
            model(ids.to(device), **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    layers = sorted(routers)
    counts, loads, balances = [], [], []
    for index in layers:
        c, f, b = expert_load_from_selections(torch.cat(selected[index]), sizes[index])
        counts.append(c)
        loads.append(f)
        balances.append(b)
    balance = torch.tensor(balances, dtype=torch.float64)
    return ExpertLoad(
        layers=layers,
        counts=torch.stack(counts),
        load=torch.stack(loads),
        balance=balance,
        mean_balance=float(balance.mean()) if not math.isnan(float(balance.mean())) else 0.0,
    )
