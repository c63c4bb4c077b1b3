"""Per-channel input magnitudes and super-outliers of the DLM-vs-AR layer-collapse study
(Conzelmann, Catalan-Tatjer, Liu, "Layer Collapse in Diffusion Language Models", arXiv 2605.06366;
code: github.com/Conzel/super-outlier-dlm, `scripts/stats/outliers.py`, `mmr.py`).

At every input site s of block l (each linear's input, and the pre-norm residual = the norm's
input), over the real tokens n of the probe windows (a diffusion LM sees masked copies of them,
`diffusion_probe_inputs`)::

    channel magnitude    m_{l,c}   = mean_n |x_{l,n,c}|
    max-to-median ratio  MMR_l     = mean_n  max_c |x_{l,n,c}| / median_c |x_{l,n,c}|
    token persistence    P_{l,c}   = frac. of tokens n with |x_{l,n,c}| > f * median_c' |x_{l,n,c'}|

Super-outlier rule (study spec B.3.2; thresholds are parameters): c*_l = argmax_c m_{l,c}; channel c
is a super-outlier iff c*_l = c in >= `min_layers` (3) consecutive layers that each have
m_{l,c}/median_c m_{l,c} >= `min_ratio` (100) and P_{l,c} >= `min_persistence` (0.9), f = 20.
Medians are torch's (the lower middle value for an even count), as in the study's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from depth_probe.capture import token_mask
from layerwise_core import TokenInputs, find_decoder, token_inputs

__all__ = ["ChannelMagnitudes", "SuperOutliers", "channel_magnitudes", "find_super_outliers"]

# Canonical sites (any architecture); linear inputs are keyed by their name inside the block.
RESIDUAL, ATTN_INPUT, MLP_RESIDUAL, MLP_INPUT = (
    "residual",
    "attn_input",
    "mlp_residual",
    "mlp_input",
)
NORM_SITES = (RESIDUAL, ATTN_INPUT, MLP_RESIDUAL, MLP_INPUT)


@dataclass
class ChannelMagnitudes:
    """Per-site statistics, each indexed by block l (see the module docstring)."""

    magnitude: dict[str, torch.Tensor]  # site -> [L, C]: m_{l,c}
    max_median_ratio: dict[str, torch.Tensor]  # site -> [L]: MMR_l
    persistence: dict[str, torch.Tensor]  # site -> [L, C]: P_{l,c}
    position_magnitude: torch.Tensor | None  # [L, T, C]: mean |x| per position at "residual"
    tokens: int  # real tokens averaged over
    persistence_factor: float = 20.0
    linear_sites: list[str] = field(default_factory=list)  # the linear-input sites, block order

    @property
    def sites(self) -> list[str]:
        return list(self.magnitude)

    def top_channels(self, site: str = ATTN_INPUT, k: int = 5) -> torch.Tensor:
        """[L, k] channels of largest m_{l,c} at each layer, largest first."""
        m = self._site(site, self.magnitude)
        return m.topk(min(k, m.shape[-1]), dim=-1).indices

    def outlier_ratio(self, site: str = ATTN_INPUT) -> torch.Tensor:
        """[L]: m_{l,c*} / median_c m_{l,c}, the top channel over the median channel."""
        m = self._site(site, self.magnitude)
        return m.amax(-1) / m.median(-1).values.clamp_min(1e-12)

    def block_mmr(self) -> torch.Tensor:
        """[L]: the MMR of the block's linear-input sites, averaged (the study's block mean)."""
        if not self.linear_sites:
            raise ValueError("block_mmr: no linear inputs were captured")
        return torch.stack([self.max_median_ratio[s] for s in self.linear_sites]).mean(0)

    def _site(self, site: str, table: dict[str, torch.Tensor]) -> torch.Tensor:
        if site not in table:
            raise ValueError(f"unknown site {site!r}; captured sites: {list(table)}")
        return table[site]

    def as_dict(self, top_k: int = 5) -> dict:
        return {
            "tokens": self.tokens,
            "persistence_factor": self.persistence_factor,
            "sites": {
                site: {
                    "max_median_ratio": self.max_median_ratio[site].tolist(),
                    "outlier_ratio": self.outlier_ratio(site).tolist(),
                    "top_channels": self.top_channels(site, top_k).tolist(),
                    "top_magnitudes": self.magnitude[site]
                    .topk(min(top_k, self.magnitude[site].shape[-1]), dim=-1)
                    .values.tolist(),
                }
                for site in self.sites
            },
            "block_mmr": self.block_mmr().tolist() if self.linear_sites else None,
        }


def _batch_stats(a: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """(sum_n |x|, #tokens over f * median, sum_n MMR, n) of a: [n, C] absolute inputs."""
    median = a.median(dim=-1).values
    mmr = a.amax(-1) / median.clamp_min(1e-8)
    persist = (a > factor * median[:, None]).sum(0)
    return a.double().sum(0), persist, float(mmr.double().sum()), a.shape[0]


class _SiteStats:
    """Running sums of one (site, layer) over batches."""

    def __init__(self):
        self.abs_sum: torch.Tensor | None = None  # [C] float64
        self.persist: torch.Tensor | None = None  # [C] int64
        self.mmr_sum = 0.0
        self.count = 0

    def add(self, batch: tuple[torch.Tensor, torch.Tensor, float, int]) -> None:
        abs_sum, persist, mmr_sum, count = batch
        if count == 0:
            return
        if self.abs_sum is None:
            self.abs_sum, self.persist = abs_sum.clone(), persist.clone()
        else:
            self.abs_sum += abs_sum
            self.persist += persist
        self.mmr_sum += mmr_sum
        self.count += count


def _real_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n_real, C] rows of a [B, T, C] (or flattened [B*T, C]) input at the real tokens."""
    if x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)].reshape(-1, x.shape[-1])
    if x.dim() == 2 and x.shape[0] == mask.numel():
        return x[mask.reshape(-1).to(x.device)]
    return x.reshape(-1, x.shape[-1])  # e.g. routed MoE expert inputs: every row is a real token


@torch.no_grad()
def channel_magnitudes(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    persistence_factor: float = 20.0,
    linear_inputs: bool = True,
    positions: bool = True,
) -> ChannelMagnitudes:
    """m_{l,c}, MMR_l and P_{l,c} at every input site of every block (module docstring), streamed
    over batches of `batch_size` windows (nothing of size [tokens, C] is kept).

    Sites: "residual" (input of the pre-attention norm = h_l, the pre-norm residual), "attn_input"
    (its output, the QKV input), "mlp_residual" / "mlp_input" (around the pre-MLP norm), and, with
    `linear_inputs`, the input of every `nn.Linear` of the block under its name in the block
    (e.g. "self_attn.q_proj", "mlp.down_proj"; LLaDA: "q_proj", "attn_out", "ff_out").
    Post-norm blocks without a pre-attention norm use the block input for both attention sites.
    `positions`: also keep the [L, T, C] mean |x| per position at "residual" (the seq x channel
    heatmap). A diffusion LM is probed on masked inputs: pass `diffusion_probe_inputs(model, ids)`.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="channel_magnitudes")
    if input_ids is None:
        raise ValueError("channel_magnitudes: input_ids is required")
    dmap = find_decoder(model)
    num = len(dmap)
    stats: dict[str, list[_SiteStats]] = {}
    linear_sites: list[str] = []
    pos_sum: list[torch.Tensor | None] = [None] * num
    current: dict[str, torch.Tensor] = {}

    # q/k/v (and gate/up) read the very tensor the norm returned: its statistics are computed once.
    # The cache holds the tensors of the current block only, so an id is never reused meanwhile.
    seen: dict[int, tuple[torch.Tensor, tuple]] = {}
    seen_layer = [-1]

    def record(site: str, index: int, x: torch.Tensor) -> None:
        if index != seen_layer[0]:
            seen.clear()
            seen_layer[0] = index
        if id(x) in seen:
            batch = seen[id(x)][1]
        else:
            rows = _real_rows(x.detach(), current["mask"]).float().abs()
            batch = _batch_stats(rows, persistence_factor)
            seen[id(x)] = (x, batch)
        stats.setdefault(site, [_SiteStats() for _ in range(num)])[index].add(batch)
        if positions and site == RESIDUAL and x.dim() == 3:
            a = x.detach().float().abs() * current["mask"].to(x.device)[..., None]
            total = a.double().sum(0)  # [T, C]
            pos_sum[index] = total if pos_sum[index] is None else pos_sum[index] + total

    handles = []
    for layer in dmap:
        i = layer.index
        pairs = ((layer.attn_norm, RESIDUAL, ATTN_INPUT), (layer.mlp_norm, MLP_RESIDUAL, MLP_INPUT))
        for norm, before, after in pairs:
            if norm is None:
                continue

            def around_norm(module, args, output, i=i, before=before, after=after):
                record(before, i, args[0])
                record(after, i, output[0] if isinstance(output, tuple) else output)

            handles.append(norm.register_forward_hook(around_norm))
        if layer.attn_norm is None:

            def block_input(module, args, kwargs, i=i):
                hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
                record(RESIDUAL, i, hidden)
                record(ATTN_INPUT, i, hidden)

            handles.append(layer.block.register_forward_pre_hook(block_input, with_kwargs=True))
        if linear_inputs:
            for name, module in layer.block.named_modules():
                if isinstance(module, nn.Linear):
                    if name not in linear_sites:
                        linear_sites.append(name)

                    def linear_input(module, args, i=i, name=name):
                        record(name, i, args[0])

                    handles.append(module.register_forward_pre_hook(linear_input))
    mask_all = token_mask(input_ids, attention_mask)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            current["mask"] = mask_all[rows]
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask[rows]}
            model(input_ids[rows], **kwargs)
            seen.clear()
            seen_layer[0] = -1
    finally:
        for handle in handles:
            handle.remove()

    magnitude, ratio, persistence = {}, {}, {}
    for site, per_layer in stats.items():
        if any(s.count == 0 for s in per_layer):
            continue  # e.g. a linear that only some blocks have
        magnitude[site] = torch.stack([s.abs_sum / s.count for s in per_layer]).float()
        ratio[site] = torch.tensor([s.mmr_sum / s.count for s in per_layer])
        persistence[site] = torch.stack([s.persist.double() / s.count for s in per_layer]).float()
    position_magnitude = None
    if positions and all(p is not None for p in pos_sum):
        counts = mask_all.double().sum(0).clamp_min(1)[:, None]  # [T, 1]
        position_magnitude = torch.stack([p.cpu() / counts for p in pos_sum]).float()
    return ChannelMagnitudes(
        magnitude=magnitude,
        max_median_ratio=ratio,
        persistence=persistence,
        position_magnitude=position_magnitude,
        tokens=int(mask_all.sum()),
        persistence_factor=persistence_factor,
        linear_sites=[s for s in linear_sites if s in magnitude],
    )


@dataclass
class SuperOutliers:
    """The super-outlier rule applied to one site (module docstring)."""

    site: str
    top_channel: torch.Tensor  # [L] c*_l
    ratio: torch.Tensor  # [L] m_{l,c*} / median_c m_{l,c}
    persistence: torch.Tensor  # [L] P_{l,c*}
    qualifies: torch.Tensor  # [L] bool: ratio and persistence thresholds both met
    runs: list[tuple[int, int, int]]  # (channel, first layer, number of layers), >= min_layers
    min_layers: int = 3
    min_ratio: float = 100.0
    min_persistence: float = 0.9

    @property
    def found(self) -> bool:
        return bool(self.runs)

    @property
    def channels(self) -> list[int]:
        """Super-outlier channels, the one with the longest run first."""
        ordered = sorted(self.runs, key=lambda r: (-r[2], r[1]))
        return list(dict.fromkeys(r[0] for r in ordered))

    @property
    def channel(self) -> int | None:
        """c*: the super-outlier of the longest run, or None when there is none."""
        return self.channels[0] if self.runs else None

    def layers(self, channel: int | None = None) -> list[int]:
        """The layers where `channel` (default c*) is the qualifying top channel of a run."""
        channel = self.channel if channel is None else channel
        return [
            layer for c, first, n in self.runs if c == channel for layer in range(first, first + n)
        ]

    def as_dict(self) -> dict:
        return {
            "site": self.site,
            "found": self.found,
            "channel": self.channel,
            "layers": self.layers() if self.found else [],
            "runs": [{"channel": c, "first": f, "layers": n} for c, f, n in self.runs],
            "top_channel": self.top_channel.tolist(),
            "ratio": self.ratio.tolist(),
            "persistence": self.persistence.tolist(),
            "thresholds": {
                "min_layers": self.min_layers,
                "min_ratio": self.min_ratio,
                "min_persistence": self.min_persistence,
            },
        }


def find_super_outliers(
    magnitudes: ChannelMagnitudes,
    *,
    site: str = ATTN_INPUT,
    min_layers: int = 3,
    min_ratio: float = 100.0,
    min_persistence: float = 0.9,
    layers: Sequence[int] | None = None,
) -> SuperOutliers:
    """Apply the super-outlier rule at `site` ("attn_input", the QKV input, is the study's key
    site; "residual" is the pre-norm stream). `layers` restricts the search (default: all).
    The persistence factor f was fixed when the magnitudes were captured."""
    m = magnitudes._site(site, magnitudes.magnitude)
    persist = magnitudes._site(site, magnitudes.persistence)
    top = m.argmax(-1)
    ratio = m.gather(-1, top[:, None])[:, 0] / m.median(-1).values.clamp_min(1e-12)
    p_top = persist.gather(-1, top[:, None])[:, 0]
    qualifies = (ratio >= min_ratio) & (p_top >= min_persistence)
    if layers is not None:
        allowed = torch.zeros_like(qualifies)
        allowed[list(layers)] = True
        qualifies &= allowed
    runs: list[tuple[int, int, int]] = []
    start = None
    for layer in range(len(top) + 1):
        continues = (
            layer < len(top)
            and bool(qualifies[layer])
            and start is not None
            and int(top[layer]) == int(top[start])
        )
        if continues:
            continue
        if start is not None and layer - start >= min_layers:
            runs.append((int(top[start]), start, layer - start))
        start = layer if layer < len(top) and bool(qualifies[layer]) else None
    return SuperOutliers(
        site=site,
        top_channel=top,
        ratio=ratio,
        persistence=p_top,
        qualifies=qualifies,
        runs=runs,
        min_layers=min_layers,
        min_ratio=min_ratio,
        min_persistence=min_persistence,
    )
