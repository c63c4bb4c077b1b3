"""Depth-usage metrics of "When Does Sparsity Mitigate the Curse of Depth in LLMs" (Muhtar et al.,
ICML 2026; spec studies.md A.3, A.6), on HF decoder-only models (Llama family, MoE included).

Notation: h_l = residual stream entering block l (h_L = last block output BEFORE the final norm),
a_l / m_l = what attention / the MLP add; 𝓛 = mean next-token cross-entropy over real tokens.
Every tensor is read from forward hooks on the blocks, never from HF `output_hidden_states` (whose
last entry is post-final-norm).

- `LayerVarianceMonitor` / `layer_variance` (A.3.1): v_l = mean_{b,t} Var_c(h_{l+1}[b,t,:])
  (unbiased over the d channels), the same for a_l and m_l, and ‖a_l‖_F, ‖m_l‖_F per forward.
- `jacobian_distance` (A.3.2): J_l[:, i] = (1/N) Σ_{b,t} ∂h_{l+1}[b,t,i]/∂h_l (all positions, so
  cross-token paths count), D_l = ‖J_l − I‖_F / d, with output channels (rows) and windows sampled.
- `usefulness` (A.3.3): least-squares affine replacement of a block, r_l = 𝓛_lin / 𝓛_base.
- `causal_scores` (A.3.4): skip block s, C[s,l] = E‖Δ'_l − Δ_l‖ / E‖Δ_l‖ for l > s, Δ_l = h_{l+1} − h_l.
- `permutation_scores` (A.3.5): swap two blocks' parameters, P = |𝓛_swap − 𝓛_base| / 𝓛_base.
- Interventions, each undone exactly on exit: `skip_layers` (layer_removal), `swap_blocks`,
  `affine_replacement`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.layer_removal import skip_layers
from layerwise_core import (
    DecoderMap,
    TokenInputs,
    capture_residual_stream,
    find_decoder,
    token_inputs,
)

__all__ = [
    "CausalScores",
    "JacobianDistance",
    "LayerVariance",
    "LayerVarianceMonitor",
    "PermutationScores",
    "Usefulness",
    "affine_replacement",
    "block_jacobian",
    "causal_scores",
    "fit_affine",
    "full_block_jacobian",
    "jacobian_distance",
    "layer_variance",
    "next_token_loss",
    "permutation_scores",
    "swap_blocks",
    "usefulness",
]


# --------------------------------------------------------------------------- shared helpers


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_first(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.ones(input_ids.shape[:2], dtype=torch.bool, device=input_ids.device)
    return attention_mask.bool()


def _inputs(input_ids, attention_mask, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what=what)
    if input_ids is None:
        raise ValueError(f"{what}: input_ids is required")
    return input_ids, attention_mask


def _batches(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, batch_size: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    size = input_ids.shape[0] if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, input_ids.shape[0], size):
        mask = None if attention_mask is None else attention_mask[start : start + size]
        yield input_ids[start : start + size], mask


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def next_token_loss(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
) -> float:
    """𝓛 = mean next-token cross-entropy over real target tokens (position t+1 scored from t, both
    real), token-weighted over micro-batches of `batch_size` rows (default: one batch), summed in
    float64. Deterministic: the same model and inputs give the same float bit for bit."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "next_token_loss")
    device = _device(model)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for ids, mask in _batches(input_ids, attention_mask, batch_size):
        ids = ids.to(device)
        kwargs = {"use_cache": False}
        if mask is not None:
            kwargs["attention_mask"] = mask.to(device)
        logits = model(ids, **kwargs).logits.float()
        real = _mask(ids, mask)
        keep = real[:, 1:] & real[:, :-1]
        ce = F.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep], reduction="sum")
        total += ce.double().cpu()
        count += int(keep.sum())
    if count == 0:
        raise ValueError("next_token_loss: no target token (pass sequences of >= 2 real tokens)")
    return float(total / count)


# --------------------------------------------------------------------------- A.3.1 variance


def _as_dict(obj) -> dict[str, Any]:
    """A result dataclass as JSON-ready values: its fields, tensors as nested lists."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.tolist() if isinstance(value, torch.Tensor) else value
    return out


@dataclass
class LayerVariance:
    """Per-block statistics (float64 tensors of shape [L]) averaged over the recorded forwards.

    output_var[l] = mean over real tokens of Var_c(h_{l+1}) (unbiased over channels); attn_var,
    mlp_var: the same for a_l, m_l; attn_norm, mlp_norm: ‖a_l‖_F, ‖m_l‖_F over the real tokens of
    one forward, averaged over forwards (the official code's per-micro-batch norm).
    """

    output_var: torch.Tensor
    attn_var: torch.Tensor
    mlp_var: torch.Tensor
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    tokens: int
    forwards: int

    @property
    def last_layer_var(self) -> float:
        """v_{L-1}, the headline quantity of the study (last block output variance)."""
        return float(self.output_var[-1])

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


class LayerVarianceMonitor:
    """Forward hooks that accumulate the A.3.1 statistics of every forward while recording.

        monitor = LayerVarianceMonitor(model)      # hooks installed, not recording
        with monitor.record():                     # e.g. every N training steps
            loss = model(input_ids, attention_mask=mask, labels=input_ids).loss
        stats = monitor.read()                     # LayerVariance averaged over those forwards; reset
        monitor.remove()                           # or use `with LayerVarianceMonitor(model) as m:`

    Cheap enough for training: per block it reduces h_{l+1}, a_l, m_l to a few scalars under
    no_grad (no tensor is kept). The 2-D attention mask is read from the model call's
    `attention_mask` keyword (padding left out of every mean; none means all tokens).

    reference_quirks=True reproduces the official `olmo/train.py`, which reads `hidden_states[1:]`
    whose last entry is AFTER the final norm: v_{L-1} is then the variance of Norm_f(h_L)
    (requires a model with a final norm that runs, i.e. a full forward).

    With activation (gradient) checkpointing the blocks run again during backward: record a
    forward whose recomputation is outside the `with` block (the backward call), as above.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        reference_quirks: bool = False,
        decoder_map: DecoderMap | None = None,
    ) -> None:
        self.model = model
        self.reference_quirks = reference_quirks
        self.dmap = decoder_map or find_decoder(model)
        if reference_quirks and self.dmap.final_norm is None:
            raise ValueError(
                "LayerVarianceMonitor: reference_quirks=True reads the final norm's output, but "
                "the model has none; use reference_quirks=False"
            )
        self.recording = False
        self._handles: list[Any] = []
        self._mask: torch.Tensor | None = None
        self._reset()
        self._install()

    def _reset(self) -> None:
        num = len(self.dmap)
        self._sums = {k: torch.zeros(num, dtype=torch.float64) for k in ("out", "attn", "mlp")}
        self._norms = {k: torch.zeros(num, dtype=torch.float64) for k in ("attn", "mlp")}
        self._tokens = 0
        self._forwards = 0

    def _real(self, tensor: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        if mask is not None and mask.shape == tensor.shape[:2]:
            return tensor[mask.to(tensor.device)]
        return tensor.reshape(-1, tensor.shape[-1])

    def _install(self) -> None:
        last = len(self.dmap) - 1

        def model_pre(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None and len(args) > 1:  # model(input_ids, attention_mask)
                mask = args[1]
            self._mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            if self.recording:
                self._forwards += 1

        def var_sum(index: int, kind: str):
            def hook(module, args, output):
                if not self.recording:
                    return
                with torch.no_grad():
                    rows = self._real(_first(output).detach()).float()
                    self._sums[kind][index] += float(rows.var(dim=-1).sum())
                    if kind == "out" and index == 0:
                        self._tokens += rows.shape[0]
                    if kind != "out":
                        self._norms[kind][index] += float(rows.norm())

            return hook

        self._handles.append(self.model.register_forward_pre_hook(model_pre, with_kwargs=True))
        for layer in self.dmap:
            i = layer.index
            if not (self.reference_quirks and i == last):
                self._handles.append(layer.block.register_forward_hook(var_sum(i, "out")))
            if layer.attn_contribution is not None:
                self._handles.append(
                    layer.attn_contribution.register_forward_hook(var_sum(i, "attn"))
                )
            self._handles.append(layer.mlp_contribution.register_forward_hook(var_sum(i, "mlp")))
        if self.reference_quirks:
            self._handles.append(self.dmap.final_norm.register_forward_hook(var_sum(last, "out")))

    @contextlib.contextmanager
    def record(self, enabled: bool = True) -> Iterator[LayerVarianceMonitor]:
        """Collect the statistics of every forward inside the `with` block (when `enabled`, e.g.
        `with monitor.record(step % every == 0):` around a training step's forward)."""
        previous, self.recording = self.recording, bool(enabled)
        try:
            yield self
        finally:
            self.recording = previous

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def read(self, *, reset: bool = True) -> LayerVariance:
        """The statistics since the last read (ValueError when no forward was recorded)."""
        if self._tokens == 0 or self._forwards == 0:
            raise ValueError(
                "LayerVarianceMonitor.read: no forward was recorded; run the model inside "
                "`with monitor.record():` (or after monitor.start())"
            )
        tokens, forwards = self._tokens, self._forwards
        stats = LayerVariance(
            output_var=self._sums["out"] / tokens,
            attn_var=self._sums["attn"] / tokens,
            mlp_var=self._sums["mlp"] / tokens,
            attn_norm=self._norms["attn"] / forwards,
            mlp_norm=self._norms["mlp"] / forwards,
            tokens=tokens,
            forwards=forwards,
        )
        if reset:
            self._reset()
        return stats

    def remove(self) -> None:
        """Remove every hook (the model is as before the monitor)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> LayerVarianceMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@torch.no_grad()
def layer_variance(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    reference_quirks: bool = False,
) -> LayerVariance:
    """A.3.1 statistics of `model` on held-out windows (one `LayerVarianceMonitor` over the
    micro-batches: variances token-weighted, norms averaged over micro-batches)."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "layer_variance")
    device = _device(model)
    with LayerVarianceMonitor(model, reference_quirks=reference_quirks) as monitor:
        with monitor.record():
            for ids, mask in _batches(input_ids, attention_mask, batch_size):
                kwargs = {"use_cache": False}
                if mask is not None:
                    kwargs["attention_mask"] = mask.to(device)
                model(ids.to(device), **kwargs)
        return monitor.read()


# --------------------------------------------------------------------------- block replay


class _Stop(Exception):
    pass


def _block_calls(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
    dmap: DecoderMap,
) -> dict[int, tuple[tuple, dict]]:
    """The (args, kwargs) every block in `layers` receives in one no-grad forward (the forward
    stops before the last of them runs)."""
    calls: dict[int, tuple[tuple, dict]] = {}
    stop_at = max(layers)

    def pre(index: int):
        def hook(module, args, kwargs):
            calls[index] = (tuple(args), dict(kwargs))
            if index == stop_at:
                raise _Stop

        return hook

    handles = [dmap[i].block.register_forward_pre_hook(pre(i), with_kwargs=True) for i in layers]
    kwargs = {"use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    try:
        with torch.no_grad():
            model(input_ids, **kwargs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _block_function(block: nn.Module, call: tuple[tuple, dict]):
    args, kwargs = call
    if args:
        hidden = args[0]

        def run(h: torch.Tensor) -> torch.Tensor:
            return _first(block(h, *args[1:], **kwargs))

    else:
        key = "hidden_states" if "hidden_states" in kwargs else "x"
        hidden = kwargs[key]

        def run(h: torch.Tensor) -> torch.Tensor:
            return _first(block(**{**kwargs, key: h}))

    return hidden.detach(), run


def _layers(num: int, layers: Iterable[int] | None, what: str) -> list[int]:
    chosen = list(range(num)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < num]
    if bad or not chosen:
        raise ValueError(f"{what}: layers {chosen} must be non-empty and within [0, {num})")
    return chosen


# --------------------------------------------------------------------------- A.3.2 Jacobian


def full_block_jacobian(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    layer: int,
    vectorize: bool = True,
) -> torch.Tensor:
    """The naive reference: `torch.autograd.functional.jacobian` of block `layer` (the whole
    [B,T,d] -> [B,T,d] map, B·T·d backward passes), reduced to the study's d×d matrix
    J[j, i] = (1/N) Σ_{real (b,t)} Σ_{real (b',t')} ∂h_{l+1}[b,t,i] / ∂h_l[b',t',j]  (float64)."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "full_block_jacobian")
    dmap = find_decoder(model)
    device = _device(model)
    ids = input_ids.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    call = _block_calls(model, ids, mask, [layer], dmap)[layer]
    hidden, run = _block_function(dmap[layer].block, call)
    full = torch.autograd.functional.jacobian(run, hidden, vectorize=vectorize)  # [B,T,d,B,T,d]
    real = _mask(ids, mask).to(full.dtype)
    weights = real[:, :, None, None, None, None] * real[None, None, None, :, :, None]
    summed = (full * weights).sum(dim=(0, 1, 3, 4))  # [d_out i, d_in j]
    return (summed.T / real.sum()).double().cpu()


def _jacobian_columns(
    run, hidden: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Σ over real output positions of ∂h_{l+1}[.,.,i]/∂h_l summed over real input positions, for
    every output channel i in `rows` -> [len(rows), d] (one backward per row, `chunk` per call)."""
    h = hidden.clone().requires_grad_(True)
    with torch.enable_grad():
        out = run(h)
    weight = mask.to(out.dtype)
    cols = []
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        seeds = torch.zeros(len(idx), *out.shape, dtype=out.dtype, device=out.device)
        seeds[torch.arange(len(idx)), :, :, idx] = weight.expand(len(idx), *weight.shape)
        if len(idx) == 1:
            grads = torch.autograd.grad(out, h, seeds[0], retain_graph=True)[0].unsqueeze(0)
        else:
            grads = torch.autograd.grad(out, h, seeds, retain_graph=True, is_grads_batched=True)[0]
        cols.append((grads * weight[None, :, :, None]).sum(dim=(1, 2)).double().cpu())
    return torch.cat(cols)


def block_jacobian(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    layer: int,
    rows: Sequence[int] | None = None,
    batch_size: int | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """Row-wise Jacobian of block `layer` in the official orientation: column i of the returned
    [d, len(rows)] float64 matrix is J[:, i] = (1/N) Σ_{real (b,t)} ∂h_{l+1}[b,t,i]/∂h_l summed over
    real input positions (cross-token paths included), i.e. the gradient of Σ_{b,t} h_{l+1}[b,t,i]
    averaged over tokens; micro-batches of `batch_size` windows are token-weighted. One backward
    per row (`chunk` rows per vectorised backward). `rows=None`: all d channels (the full J)."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "block_jacobian")
    result = _jacobian_sums(
        model, input_ids, attention_mask, [layer], rows, batch_size, chunk, rng=None
    )[layer]
    sums, counts = result
    return (sums.sum(0) / sum(counts)).T


def _jacobian_sums(model, input_ids, attention_mask, layers, rows, batch_size, chunk, rng):
    dmap = find_decoder(model)
    device = _device(model)
    hidden_size = dmap.embed_tokens.weight.shape[-1]
    out: dict[int, tuple[torch.Tensor, list[int]]] = {}
    per_layer_rows = {}
    for layer in layers:
        if rows is None:
            chosen = torch.arange(hidden_size)
        elif isinstance(rows, int):
            chosen = torch.randperm(hidden_size, generator=rng)[:rows].sort().values
        else:
            chosen = torch.as_tensor(list(rows), dtype=torch.long)
        per_layer_rows[layer] = chosen
    sums: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    counts: list[int] = []
    for ids, mask in _batches(input_ids, attention_mask, batch_size):
        ids = ids.to(device)
        mask = None if mask is None else mask.to(device)
        real = _mask(ids, mask)
        calls = _block_calls(model, ids, mask, layers, dmap)
        for layer in layers:
            hidden, run = _block_function(dmap[layer].block, calls[layer])
            sums[layer].append(_jacobian_columns(run, hidden, real, per_layer_rows[layer], chunk))
        counts.append(int(real.sum()))
    for layer in layers:
        out[layer] = (torch.stack(sums[layer]), counts)
    return {layer: out[layer] for layer in layers} | {"rows": per_layer_rows}


@dataclass
class JacobianDistance:
    """A.3.2 statistics per analysed block (float64 tensors of shape [len(layers)]).

    distance = ‖J − I‖_F / d (the study's D_l); off_diagonal = ‖offdiag J‖_F / sqrt(d² − d);
    diagonal_mean / diagonal_std (unbiased) of diag J; frobenius = ‖J‖_F; spectral = ‖J‖₂ (NaN when
    rows are sampled). With k < d sampled output channels the squared norms are estimated by
    (d/k) Σ_{i sampled} of the column energies (unbiased under sampling without replacement);
    distance_sem_rows is its standard error (finite-population corrected, delta method for the
    square root). distance_sem_windows: jackknife standard error over the micro-batches of windows
    (NaN with one micro-batch).
    """

    layers: list[int]
    distance: torch.Tensor
    distance_sem_rows: torch.Tensor
    distance_sem_windows: torch.Tensor
    off_diagonal: torch.Tensor
    diagonal_mean: torch.Tensor
    diagonal_std: torch.Tensor
    frobenius: torch.Tensor
    spectral: torch.Tensor
    rows: int
    tokens: int
    backward_passes: int

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _distance_from_columns(cols: torch.Tensor, rows: torch.Tensor, d: int) -> float:
    """‖J − I‖_F / d estimated from sampled columns cols [k, d] (column i = J[:, rows[i]])."""
    k = len(rows)
    centred = cols.clone()
    centred[torch.arange(k), rows] -= 1.0
    energy = centred.pow(2).sum(-1)
    return math.sqrt(max(float(energy.sum()) * d / k, 0.0)) / d


def jacobian_distance(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    layers: Iterable[int] | None = None,
    rows: int | Sequence[int] | None = None,
    windows: int | None = None,
    batch_size: int | None = None,
    chunk: int = 32,
    seed: int = 0,
) -> JacobianDistance:
    """Jacobian distance from identity of each block (A.3.2, the official "rowwise" method; see
    `block_jacobian` for J and `JacobianDistance` for the statistics).

    Cost per block = (rows) backward passes per micro-batch through that block only (the block is
    replayed on its captured input), against B·T·d for the naive `full_block_jacobian`.

    Args:
        rows: output channels to differentiate: None = all d (exact J, the official cost), an int
            k = a random sample of k channels (seeded), or explicit channel indices.
        windows: use a random subset of this many windows (rows of input_ids); None = all.
        batch_size: windows per micro-batch (the official code uses 2); also the jackknife unit.
        chunk: rows per vectorised backward (`is_grads_batched`); 1 = plain loop.
    """
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "jacobian_distance")
    rng = torch.Generator().manual_seed(seed)
    if windows is not None and windows < input_ids.shape[0]:
        pick = torch.randperm(input_ids.shape[0], generator=rng)[:windows].sort().values
        input_ids = input_ids[pick]
        attention_mask = None if attention_mask is None else attention_mask[pick]
    dmap = find_decoder(model)
    chosen = _layers(len(dmap), layers, "jacobian_distance")
    d = dmap.embed_tokens.weight.shape[-1]
    results = _jacobian_sums(model, input_ids, attention_mask, chosen, rows, batch_size, chunk, rng)
    stats: dict[str, list[float]] = {
        k: []
        for k in (
            "distance",
            "sem_rows",
            "sem_windows",
            "off",
            "dmean",
            "dstd",
            "fro",
            "spectral",
        )
    }
    k = 0
    tokens = 0
    passes = 0
    for layer in chosen:
        sums, counts = results[layer]
        picked = results["rows"][layer]
        k = len(picked)
        tokens = sum(counts)
        passes += k * len(counts)
        cols = sums.sum(0) / tokens  # [k, d]
        sampled = k < d
        diag = cols[torch.arange(k), picked]
        centred = cols.clone()
        centred[torch.arange(k), picked] -= 1.0
        energy = centred.pow(2).sum(-1)
        total = float(energy.sum()) * d / k
        distance = math.sqrt(max(total, 0.0)) / d
        if sampled and k > 1:
            var_total = d**2 * float(energy.var()) / k * (1 - k / d)
            sem = math.sqrt(var_total) / (2 * math.sqrt(total) * d) if total > 0 else 0.0
        else:
            sem = 0.0
        if len(counts) > 1:
            leave = [
                _distance_from_columns((sums.sum(0) - sums[b]) / (tokens - counts[b]), picked, d)
                for b in range(len(counts))
            ]
            mean = sum(leave) / len(leave)
            n = len(leave)
            jack = math.sqrt((n - 1) / n * sum((x - mean) ** 2 for x in leave))
        else:
            jack = float("nan")
        col_energy = cols.pow(2).sum(-1)
        off = (float(col_energy.sum()) - float(diag.pow(2).sum())) * d / k
        stats["distance"].append(distance)
        stats["sem_rows"].append(sem)
        stats["sem_windows"].append(jack)
        stats["off"].append(math.sqrt(max(off, 0.0) / (d * d - d)))
        stats["dmean"].append(float(diag.mean()))
        stats["dstd"].append(float(diag.std()) if k > 1 else float("nan"))
        stats["fro"].append(math.sqrt(float(col_energy.sum()) * d / k))
        if sampled:
            stats["spectral"].append(float("nan"))
        else:
            full = torch.empty(d, d, dtype=cols.dtype)
            full[:, picked] = cols.T
            stats["spectral"].append(float(torch.linalg.matrix_norm(full.float(), ord=2)))
    as_t = {key: torch.tensor(value, dtype=torch.float64) for key, value in stats.items()}
    return JacobianDistance(
        layers=chosen,
        distance=as_t["distance"],
        distance_sem_rows=as_t["sem_rows"],
        distance_sem_windows=as_t["sem_windows"],
        off_diagonal=as_t["off"],
        diagonal_mean=as_t["dmean"],
        diagonal_std=as_t["dstd"],
        frobenius=as_t["fro"],
        spectral=as_t["spectral"],
        rows=k,
        tokens=tokens,
        backward_passes=passes,
    )


# --------------------------------------------------------------------------- interventions


@contextlib.contextmanager
def swap_blocks(model: nn.Module, first: int, second: int) -> Iterator[nn.Module]:
    """Within the `with` block, blocks `first` and `second` exchange ALL their parameters (as the
    official permutation score does); on exit they are swapped back, bit for bit."""
    dmap = find_decoder(model)
    num = len(dmap)
    if not (0 <= first < num and 0 <= second < num) or first == second:
        raise ValueError(
            f"swap_blocks: need two distinct blocks in [0, {num}), got {first}, {second}"
        )
    params_a = dict(dmap[first].block.named_parameters())
    params_b = dict(dmap[second].block.named_parameters())
    shapes_a = {n: p.shape for n, p in params_a.items()}
    shapes_b = {n: p.shape for n, p in params_b.items()}
    if shapes_a != shapes_b:
        raise ValueError(
            f"swap_blocks: blocks {first} and {second} have different parameters; only blocks of "
            "the same architecture can be swapped"
        )

    def exchange() -> None:
        with torch.no_grad():
            for name, a in params_a.items():
                b = params_b[name]
                held = a.detach().clone()
                a.copy_(b)
                b.copy_(held)

    exchange()
    try:
        yield model
    finally:
        exchange()


def fit_affine(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[W; b] = argmin ‖Y − [X, 1][W; b]‖² over rows (float64 least squares); X [N, d_in],
    Y [N, d_out] -> W [d_in, d_out], b [d_out], so that Y ≈ X W + b."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    y = targets.reshape(-1, targets.shape[-1]).double()
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    solution = torch.linalg.lstsq(design.cpu(), y.cpu(), driver="gelsd").solution
    return solution[:-1], solution[-1]


@contextlib.contextmanager
def affine_replacement(
    model: nn.Module, layer: int, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> Iterator[nn.Module]:
    """Within the `with` block, block `layer` computes h_{l+1} = h_l W + b instead of itself (a
    forward hook replaces its output; W [d, d], b [d], cast to the stream's dtype); the hook is
    removed on exit, so the model is unchanged bit for bit."""
    dmap = find_decoder(model)
    if not 0 <= layer < len(dmap):
        raise ValueError(f"affine_replacement: layer {layer} out of range for {len(dmap)} blocks")

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        w = weight.to(device=hidden.device, dtype=hidden.dtype)
        out = hidden @ w
        if bias is not None:
            out = out + bias.to(device=hidden.device, dtype=hidden.dtype)
        return _with_first(output, out)

    handle = dmap[layer].block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


# --------------------------------------------------------------------------- A.3.3 usefulness


@dataclass
class Usefulness:
    """A.3.3: loss_ratio[l] = 𝓛 with block l replaced by its least-squares affine map / 𝓛_base;
    useful[l] = loss_ratio > threshold; score U = #useful / #analysed blocks."""

    layers: list[int]
    base_loss: float
    replaced_loss: torch.Tensor
    loss_ratio: torch.Tensor
    useful: torch.Tensor
    score: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _stream(model, input_ids, attention_mask, batch_size, dmap, *, final_norm: bool):
    """h_0..h_L per micro-batch (pre-final-norm), real-token mask, and Norm_f(h_L) if wanted."""
    device = _device(model)
    out = []
    for ids, mask in _batches(input_ids, attention_mask, batch_size):
        ids = ids.to(device)
        mask = None if mask is None else mask.to(device)
        stream = capture_residual_stream(
            model,
            ids,
            mask,
            kinds=("inputs", "outputs"),
            logits=final_norm,
            decoder_map=dmap,
            use_cache=False,
        )
        out.append((stream, _mask(ids, mask)))
    return out


def usefulness(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    layers: Iterable[int] | None = None,
    threshold: float = 1.10,
    batch_size: int | None = None,
    reference_quirks: bool = False,
) -> Usefulness:
    """Usefulness by affine replacement (A.3.3): for each block l, fit [W; b] on all real tokens
    (X = h_l, Y = h_{l+1}; the fit data are the evaluation data, as in the official code), run the
    model with x ↦ xW + b in place of the block, r_l = 𝓛_lin / 𝓛_base; useful iff r_l > threshold.
    L + 1 forwards for the loss plus one capture.

    reference_quirks=True reproduces `compute_usefulness.py`: its `nn.Linear(weight=W)` applies
    x Wᵀ + b (the transpose of the fitted map). (Its bf16 autocast is not reproduced: run the model
    in bf16 for that.)
    """
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "usefulness")
    dmap = find_decoder(model)
    chosen = _layers(len(dmap), layers, "usefulness")
    captured = _stream(model, input_ids, attention_mask, batch_size, dmap, final_norm=False)
    base = next_token_loss(model, input_ids, attention_mask, batch_size=batch_size)
    replaced = []
    for layer in chosen:
        xs = torch.cat([s.inputs[layer][m] for s, m in captured])
        ys = torch.cat([s.outputs[layer][m] for s, m in captured])
        weight, bias = fit_affine(xs, ys)
        if reference_quirks:
            weight = weight.T
        with affine_replacement(model, layer, weight, bias):
            replaced.append(
                next_token_loss(model, input_ids, attention_mask, batch_size=batch_size)
            )
    replaced_t = torch.tensor(replaced, dtype=torch.float64)
    ratio = replaced_t / base
    useful = ratio > threshold
    return Usefulness(
        layers=chosen,
        base_loss=base,
        replaced_loss=replaced_t,
        loss_ratio=ratio,
        useful=useful,
        score=float(useful.double().mean()),
        threshold=threshold,
    )


# --------------------------------------------------------------------------- A.3.4 causal score


@dataclass
class CausalScores:
    """A.3.4: matrix[s, l] = E‖Δ'_l − Δ_l‖₂ / E‖Δ_l‖₂ (ratio of token means) for l > s, NaN for
    l ≤ s; per_block[s] = c_s = mean_{l > s} matrix[s, l] (NaN for the last block); score = mean
    of the defined c_s (the global aggregation is ours: the official code prints c_s)."""

    skipped: list[int]
    matrix: torch.Tensor
    per_block: torch.Tensor
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "matrix": self.matrix.tolist(),
            "per_block": self.per_block.tolist(),
            "score": self.score,
        }


def _deltas(stream, mask, *, quirk: bool) -> list[torch.Tensor]:
    hidden = list(stream.hidden_states)
    if quirk:
        hidden[-1] = stream.final_norm_output
    return [(hidden[i + 1] - hidden[i])[mask].float() for i in range(len(hidden) - 1)]


@torch.no_grad()
def causal_scores(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    skipped: Iterable[int] | None = None,
    batch_size: int | None = None,
    reference_quirks: bool = False,
) -> CausalScores:
    """Causal score of each skipped block s (A.3.4): skip s (`skip_layers`: h_{s+1} := h_s) and
    measure how much every later block's update Δ_l = h_{l+1} − h_l changes, relative to its size.
    One baseline capture plus one capture per skipped block and micro-batch.

    reference_quirks=True takes h_L after the final norm for the last block's Δ (the quirk of the
    official training statistics; the official layer-score script reads pre-norm states).
    """
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "causal_scores")
    dmap = find_decoder(model)
    num = len(dmap)
    chosen = _layers(num, skipped, "causal_scores")
    device = _device(model)
    numer = torch.zeros(len(chosen), num, dtype=torch.float64)
    denom = torch.zeros(num, dtype=torch.float64)
    for ids, mask in _batches(input_ids, attention_mask, batch_size):
        ids = ids.to(device)
        mask = None if mask is None else mask.to(device)
        real = _mask(ids, mask)
        kinds = ("inputs", "outputs")
        base = capture_residual_stream(
            model,
            ids,
            mask,
            kinds=kinds,
            logits=reference_quirks,
            decoder_map=dmap,
            use_cache=False,
        )
        delta = _deltas(base, real, quirk=reference_quirks)
        for l in range(num):
            denom[l] += float(delta[l].norm(dim=-1).sum())
        for row, s in enumerate(chosen):
            with skip_layers(model, [s]):
                skipped_stream = capture_residual_stream(
                    model, ids, mask, kinds=kinds, logits=reference_quirks, use_cache=False
                )
            changed = _deltas(skipped_stream, real, quirk=reference_quirks)  # blocks l != s
            for l in range(s + 1, num):
                numer[row, l] += float((changed[l - 1] - delta[l]).norm(dim=-1).sum())
    matrix = torch.full((len(chosen), num), float("nan"), dtype=torch.float64)
    for row, s in enumerate(chosen):
        for l in range(s + 1, num):
            matrix[row, l] = numer[row, l] / denom[l] if denom[l] > 1e-8 else 0.0
    per_block = torch.tensor(
        [
            float(matrix[r, s + 1 :].mean()) if s + 1 < num else float("nan")
            for r, s in enumerate(chosen)
        ],
        dtype=torch.float64,
    )
    defined = per_block[~per_block.isnan()]
    return CausalScores(
        skipped=chosen,
        matrix=matrix,
        per_block=per_block,
        score=float(defined.mean()) if len(defined) else float("nan"),
    )


# --------------------------------------------------------------------------- A.3.5 permutation


@dataclass
class PermutationScores:
    """A.3.5: matrix[l1, l2] = |𝓛_swap − 𝓛_base| / 𝓛_base for each tested pair l1 < l2 (NaN
    elsewhere); score = mean over tested pairs (the study's global score); normalized = sum /
    (L(L−1)/2); weighted = the official 0.9^layer-weighted mean of per-layer averages."""

    pairs: list[tuple[int, int]]
    base_loss: float
    matrix: torch.Tensor
    score: float
    normalized: float
    weighted: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": [list(p) for p in self.pairs],
            "base_loss": self.base_loss,
            "matrix": self.matrix.tolist(),
            "score": self.score,
            "normalized": self.normalized,
            "weighted": self.weighted,
        }


def permutation_scores(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    pairs: Iterable[tuple[int, int]] | None = None,
    batch_size: int | None = None,
) -> PermutationScores:
    """Permutation score (A.3.5): swap all parameters of blocks l1 < l2 (`swap_blocks`) and
    measure the relative loss change, for `pairs` (default all L(L−1)/2). One forward per pair."""
    input_ids, attention_mask = _inputs(input_ids, attention_mask, "permutation_scores")
    num = len(find_decoder(model))
    chosen = (
        [(a, b) for a in range(num) for b in range(a + 1, num)]
        if pairs is None
        else [tuple(sorted((int(a), int(b)))) for a, b in pairs]
    )
    if not chosen:
        raise ValueError("permutation_scores: no pair to test (a model of >= 2 blocks is needed)")
    base = next_token_loss(model, input_ids, attention_mask, batch_size=batch_size)
    matrix = torch.full((num, num), float("nan"), dtype=torch.float64)
    for a, b in chosen:
        with swap_blocks(model, a, b):
            swapped = next_token_loss(model, input_ids, attention_mask, batch_size=batch_size)
        matrix[a, b] = abs(base - swapped) / base
    scores = torch.tensor([float(matrix[a, b]) for a, b in chosen], dtype=torch.float64)
    weights = 0.9 ** torch.arange(num, dtype=torch.float64)
    sums = torch.zeros(num, dtype=torch.float64)
    counts = torch.zeros(num, dtype=torch.float64)
    for (a, b), value in zip(chosen, scores.tolist()):
        for layer in (a, b):
            sums[layer] += value * weights[layer]
            counts[layer] += 1
    per_layer = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
    total_pairs = num * (num - 1) / 2
    return PermutationScores(
        pairs=chosen,  # type: ignore[arg-type]
        base_loss=base,
        matrix=matrix,
        score=float(scores.mean()),
        normalized=float(scores.sum() / total_pairs),
        weighted=float(per_layer.mean()),
    )
