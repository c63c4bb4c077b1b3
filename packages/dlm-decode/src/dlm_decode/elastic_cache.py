"""Elastic-Cache: attention-aware, depth-aware KV refresh with a sliding window of masks.

Nguyen-Tri, Ranjan, Shen, "Attention Is All You Need for KV Cache in Diffusion LLMs",
arXiv:2510.14973 (MBZUAI VILA Lab), project page vila-lab.github.io/elastic-cache-webpage, code
github.com/VILA-Lab/Elastic-Cache (not in the stored index: no file or commit of it was read).

Each step t decodes with confidence-threshold parallel decoding (Fast-dLLM's rule,
`parallel_decoding.threshold_rule`: every p >= eps, and always the most confident) inside a
sliding window M_beta of the `window` leftmost still-masked positions. The network is run layer
by layer with a per-layer K/V cache:

- Step 1 (and any step of a row with nothing cached): a full pass over every position fills the
  cache of every layer (K, V, the post-RoPE queries, the layer's input hidden states).
- Later steps feed only the query set: the window, the positions committed at the previous step,
  the tracked tokens (below) and, for a shifted (Dream-style) model, each window position minus
  one. Every other position (the prompt, older decoded tokens and the off-window [MASK]s) is
  attended through its cached K/V; the queried rows overwrite their cache rows.
- Drift test, at every layer l fed in this reuse mode: for the tracked tokens T (the
  most-attended decoded token of each layer at the previous step, `track_num` per layer, their
  union), compare their attention row computed from the cache as it was (previous queries, keys
  before this step's writes) with the row computed now:

      sigma^l = mean over heads h and t in T of cos(S_prev[h, t, :], S_now[h, t, :])

  and if sigma^l < gamma the row refreshes: layers l+1 .. L-1 recompute every position, their
  input restored from the cached layer inputs with the queried rows written in (the layer that
  failed, and every shallower one, keep their caches). A layer's K/V at a position depend on
  its own input only, so layer l+1's K/V outside the query set come out as cached; its new
  outputs make layers l+2 .. L-1 the first whose K/V move everywhere.
- Most-attended token of layer l: argmax over decoded positions k (prompt included, [MASK] and
  padding excluded) of alpha_k = sum over window queries q and heads of S[h, q, k].

Where each piece comes from:
- sliding window of leftmost masks, off-window [MASK] K/V cached, "when the attention weights of
  the most-attended tokens (one for each layer) change significantly at a layer l, recompute the
  KV cache from layer l + 1 to the last layer": the repository README (read through a mirror page
  of github.com/VILA-Lab/Elastic-Cache in the "pages" corpus) and the abstract. [paper/secondary]
- most-attended token as the argmax of attention summed over the window queries, restricted to
  decoded tokens; cosine similarity of its attention rows between consecutive steps against
  gamma; the query set (tracked + newly decoded + window); refresh from l + 1 with the cached
  layer inputs restored; defaults gamma = 0.9, window (beta) = 16, eps = 0.9, track_num = 1: a
  third-party write-up that re-derives the paper and sketches its code (code-search index, not
  attributable to a repository); it matches the README wherever both speak. [unverified: not
  read in the authors' code or the paper's own text]
- the averaging of the cosine (per head over keys, then mean over heads and tracked tokens):
  ours. The sketch takes `cosine_similarity(..., dim=1)`, i.e. across heads, which reads like a
  slip; unverified against the authors' code.
- gamma >= 1: ours, every step is a full pass (sigma <= 1, so the test always fails; recomputing
  from layer 0 rather than from layer 1 makes "always refresh" exactly uncached decoding, which
  the l + 1 rule would not: layer 1's cached inputs are stale).
- no semi-autoregressive blocks, no periodic refresh, no EOS cut-off of the masked set (the
  sketch stops at the first decoded EOS; use `generate(..., stop_at_eos=True)`): ours/as sketched.

Requires a transformers-style backbone (`model.get_decoder()` with `layers`, `rotary_emb`, `norm`,
`embed_tokens`; each layer takes `position_embeddings=(cos, sin)`, a 4-D mask and a cache with
`update(k, v, layer_idx)`; its attention exposes `q_proj`, optionally `q_norm`), as the Llama /
Qwen2 families and the native LLaDA / Dream classes do. RoPE is applied to the captured queries
with the rotate-half convention of those families. NFE: one per row per step, a partial refresh
included; `ElasticCache.refresh_log[row]` lists (step, first recomputed layer) of every pass that
recomputed all positions from some layer (step 1: layer 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from dlm_decode._base import _StrategyConfig, _Validated
from dlm_decode.adapters import MaskedDiffusionLM, position_ids_from_mask
from dlm_decode.canvas import Canvas
from dlm_decode.parallel_decoding import threshold_rule
from dlm_decode.remasking import never_the_mask, token_confidence
from layerwise_core.hf_cache import additive_mask, cache_keyword

__all__ = [
    "ElasticCache",
    "ElasticCacheConfig",
    "attention_similarity",
    "decode_elastic_cache",
]


class ElasticCacheConfig(_StrategyConfig):
    """Elastic-Cache (arXiv:2510.14973). Defaults gamma 0.9, window 16, threshold 0.9, one tracked
    token per layer: [unverified] (a third-party sketch of the released code; see the module)."""

    gamma: float = Field(0.9, ge=0, le=1)  # refresh when the drift similarity falls below it
    window: int = Field(16, ge=1)  # beta: leftmost masked positions decoded (the rest cached)
    threshold: float = Field(0.9, ge=0, le=1)  # eps: commit every p >= eps (and the top 1)
    track_num: int = Field(1, ge=1)  # most-attended tokens tracked per layer
    temperature: float = Field(0.0, ge=0)  # Gumbel-max sampling temperature; 0: argmax
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    backend: Literal["auto", "torch", "triton"] = "auto"  # top-2 confidence op backend

    def build(self) -> ElasticCache:
        return ElasticCache(**self._options(ElasticCache))


_ELASTIC = ElasticCacheConfig()


@dataclass
class ElasticCache(_Validated):
    """Elastic-Cache decoding (see the module docstring); `refresh_log[row]` holds (step, first
    recomputed layer) for every refresh of that row in the last `run`."""

    config_class: ClassVar[type[_StrategyConfig]] = ElasticCacheConfig

    gamma: float = _ELASTIC.gamma
    window: int = _ELASTIC.window
    threshold: float = _ELASTIC.threshold
    track_num: int = _ELASTIC.track_num
    temperature: float = _ELASTIC.temperature
    remasking: str = _ELASTIC.remasking
    backend: str = _ELASTIC.backend
    refresh_log: list[list[tuple[int, int]]] = field(default_factory=list, repr=False)
    _gen_length: int = field(default=0, init=False, repr=False)

    @property
    def step_budget(self) -> int:
        return self._gen_length

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        self._gen_length = canvas.gen_length
        self.refresh_log = decode_elastic_cache(
            canvas,
            gamma=self.gamma,
            window=self.window,
            threshold=self.threshold,
            track_num=self.track_num,
            temperature=self.temperature,
            remasking=self.remasking,
            generator=generator,
            backend=self.backend,
        )


def attention_similarity(
    previous: torch.Tensor, current: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The drift test's sigma per row: cosine over keys of attention rows (N, H, T, K), averaged
    over heads and the tracked tokens where `valid` (N, T) is True. (N,); 1 where none is valid."""
    cos = F.cosine_similarity(previous.float(), current.float(), dim=-1)  # (N, H, T)
    if valid is None:
        return cos.mean(dim=(1, 2))
    weight = valid[:, None, :].to(cos.dtype).expand_as(cos)
    total = weight.sum(dim=(1, 2))
    sigma = (cos * weight).sum(dim=(1, 2)) / total.clamp(min=1)
    return torch.where(total > 0, sigma, torch.ones_like(sigma))


def _padded(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the True entries of mask (N, L), ascending, padded to the row maximum (>= 1):
    (idx (N, M), valid (N, M)); padding repeats each row's first entry."""
    counts = mask.sum(1)
    width = max(int(counts.max()) if mask.numel() else 0, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, order[:, :1]), valid


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LayerCache:
    """The cache handed to one layer call: stores full K/V, or splices the queried rows in."""

    def __init__(self, state: _ElasticState, layer: int, rows: torch.Tensor, idx, valid) -> None:
        self.state, self.layer, self.rows, self.idx, self.valid = state, layer, rows, idx, valid
        self.old_keys: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        state, layer, rows = self.state, self.layer, self.rows
        if self.idx is None:  # full mode: every position recomputed
            state.store("keys", layer, rows, key_states)
            state.store("values", layer, rows, value_states)
            return key_states, value_states
        first = self.valid[:, None, :, None]
        key_states = torch.where(first, key_states, key_states[:, :, :1])
        value_states = torch.where(first, value_states, value_states[:, :, :1])
        index = self.idx[:, None, :, None].expand(-1, key_states.shape[1], -1, key_states.shape[-1])
        self.old_keys = state.keys[layer][rows]
        keys = self.old_keys.scatter(2, index, key_states)
        values = state.values[layer][rows].scatter(2, index, value_states)
        state.store("keys", layer, rows, keys)
        state.store("values", layer, rows, values)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class _ElasticState:
    """Per layer, for every batch row and position: input hidden states, K, V, post-RoPE queries
    (as last computed)."""

    def __init__(self, batch: int, layers: int) -> None:
        self.batch = batch
        self.hidden: list[Any] = [None] * layers
        self.keys: list[Any] = [None] * layers
        self.values: list[Any] = [None] * layers
        self.queries: list[Any] = [None] * layers

    def store(self, name: str, layer: int, rows: torch.Tensor, value: torch.Tensor) -> None:
        table = getattr(self, name)
        if table[layer] is None:
            shape = (self.batch, *value.shape[1:])
            table[layer] = torch.zeros(shape, dtype=value.dtype, device=value.device)
        table[layer][rows] = value


class _Runner:
    """Runs the backbone layer by layer over full sequences or query sets, with the cache."""

    def __init__(self, lm: MaskedDiffusionLM, canvas: Canvas, gamma: float, track_num: int):
        if not lm.supports_kv_cache:
            raise ValueError(
                f"Elastic-Cache runs the backbone layer by layer and needs a transformers decoder "
                f"(get_decoder/get_output_embeddings); this model ({type(lm.model).__name__}, call "
                f"style {lm.call_style!r}) has none: load the native LLaDA/Dream classes of "
                "dlm_decode.models or a Llama/Qwen2-family model"
            )
        backbone = lm.model.get_decoder()
        missing = [
            n for n in ("layers", "rotary_emb", "norm", "embed_tokens") if not hasattr(backbone, n)
        ]
        if missing:
            raise ValueError(
                f"Elastic-Cache needs backbone.{'/'.join(missing)} ({type(backbone).__name__} "
                "lacks them): use a Llama/Qwen2-family decoder or the native LLaDA/Dream classes"
            )
        self.lm, self.canvas, self.gamma, self.track_num = lm, canvas, gamma, track_num
        self.backbone = backbone
        self.layers = list(backbone.layers)
        self.head = lm.model.get_output_embeddings()
        config = getattr(backbone, "config", None) or lm.model.config
        self.eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
        self.keyword = cache_keyword(self.layers[0].forward)
        self.attn = []
        for i, layer in enumerate(self.layers):
            attn = getattr(layer, "self_attn", layer)
            if not hasattr(attn, "q_proj"):
                raise ValueError(
                    f"Elastic-Cache reads the queries of layer {i} from its attention's q_proj, "
                    f"which {type(attn).__name__} does not have: use a Llama/Qwen2-style layer"
                )
            heads = getattr(config, "num_attention_heads", None)
            head_dim = getattr(attn, "head_dim", None) or config.hidden_size // heads
            scaling = getattr(attn, "scaling", head_dim**-0.5)
            self.attn.append((attn, head_dim, scaling))
        self._captured: torch.Tensor | None = None
        self._hooks = [a.q_proj.register_forward_hook(self._capture) for a, _, _ in self.attn]
        batch, length = canvas.x.shape
        self.positions = (
            position_ids_from_mask(canvas.key_mask)
            if canvas.key_mask is not None
            else torch.arange(length, device=canvas.device).expand(batch, -1)
        )
        self.real = (
            canvas.key_mask.bool()
            if canvas.key_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=canvas.device)
        )
        self.state = _ElasticState(batch, len(self.layers))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _capture(self, module, inputs, output) -> None:
        self._captured = output

    # -- one layer ---------------------------------------------------------------------------
    def _call(self, l: int, h: torch.Tensor, rows: torch.Tensor, idx, valid):
        """Run layer l on hidden h (N, Q, D) of `rows` at positions idx (N, Q) (None: all).
        Returns (output, post-RoPE queries (N, H, Q, hd), the cache used)."""
        n, q_len = h.shape[:2]
        pos = self.positions[rows] if idx is None else self.positions[rows].gather(1, idx)
        cos, sin = self.backbone.rotary_emb(h, pos)
        real = self.real[rows]
        mask = real[:, None, None, :].expand(n, 1, q_len, real.shape[1])
        if self.eager:
            mask = additive_mask(mask, h.dtype)
        cache = _LayerCache(self.state, l, rows, idx, valid)
        out = self.layers[l](
            h,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            position_embeddings=(cos, sin),
            **{self.keyword: cache},
        )
        out = out[0] if isinstance(out, tuple) else out
        attn, head_dim, _ = self.attn[l]
        q = self._captured.view(n, q_len, -1, head_dim)
        if getattr(attn, "q_norm", None) is not None:
            q = attn.q_norm(q)
        q = q.transpose(1, 2)
        q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)
        return out, q, cache

    def _attention(self, l: int, q: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor):
        """Attention rows (N, H, M, L) of queries q (N, H, M, hd) over keys (N, Hkv, L, hd)."""
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
        scores = (q.float() @ keys.float().transpose(-1, -2)) * self.attn[l][2]
        scores = scores.masked_fill(~self.real[rows][:, None, None, :], float("-inf"))
        return scores.softmax(-1)

    def _most_attended(self, att: torch.Tensor, wvalid: torch.Tensor, rows: torch.Tensor):
        """(N, L) bool: the track_num decoded positions with the most attention from the window."""
        alpha = (att * wvalid[:, None, :, None]).sum(dim=(1, 2))
        decoded = (self.canvas.x[rows] != self.canvas.mask_id) & self.real[rows]
        alpha = alpha.masked_fill(~decoded, float("-inf"))
        top = alpha.topk(min(self.track_num, alpha.shape[1]), dim=1).indices
        out = torch.zeros_like(decoded).scatter_(1, top, True)
        return out & decoded

    # -- one step ----------------------------------------------------------------------------
    def forward(self, rows, window, query, track, refresh_from):
        """Logits of the window positions of `rows` (N,).

        window, query, track: (N, L) bool. refresh_from (N,): the layer from which a row
        recomputes every position (0: a full pass; len(layers): none unless the drift test fails;
        updated in place). Returns (logits (N, W, V), widx, wvalid, new track (N, L))."""
        canvas, state, n_layers = self.canvas, self.state, len(self.layers)
        x = canvas.x[rows]
        n, length = x.shape
        full = refresh_from == 0
        idx, valid = _padded(query)
        widx, wvalid = _padded(window)
        tidx, tvalid = _padded(track)
        embed = self.backbone.embed_tokens
        h_q = embed(x.gather(1, idx))
        h_f = torch.zeros(n, length, h_q.shape[-1], dtype=h_q.dtype, device=h_q.device)
        if bool(full.any()):
            h_f[full] = embed(x[full])
        new_track = torch.zeros(n, length, dtype=torch.bool, device=x.device)
        gather_d = lambda t: t[:, :, None].expand(-1, -1, h_q.shape[-1])  # noqa: E731
        for l in range(n_layers):
            switch = (refresh_from == l) & ~full
            if bool(switch.any()):
                base = state.hidden[l][rows[switch]]
                h_f[switch] = base.scatter(1, gather_d(idx[switch]), h_q[switch])
                full |= switch
            a, b = (~full).nonzero().flatten(), full.nonzero().flatten()
            if a.numel():
                ra, ia, va = rows[a], idx[a], valid[a]
                state.store("hidden", l, ra, state.hidden[l][ra].scatter(1, gather_d(ia), h_q[a]))
                out, q, cache = self._call(l, h_q[a], ra, ia, va)
                q = torch.where(va[:, None, :, None], q, q[:, :, :1])
                old_q = state.queries[l][ra]
                index = ia[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
                new_q = old_q.scatter(2, index, q)
                state.store("queries", l, ra, new_q)
                keys = state.keys[l][ra]
                if self.gamma > 0 and l < n_layers - 1:
                    t_index = tidx[a][:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
                    before = self._attention(l, old_q.gather(2, t_index), cache.old_keys, ra)
                    now = self._attention(l, new_q.gather(2, t_index), keys, ra)
                    sigma = attention_similarity(before, now, tvalid[a])
                    fails = sigma < self.gamma
                    refresh_from[a[fails]] = torch.minimum(
                        refresh_from[a[fails]], torch.full_like(refresh_from[a[fails]], l + 1)
                    )
                w_index = widx[a][:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
                att = self._attention(l, new_q.gather(2, w_index), keys, ra)
                new_track[a] = self._most_attended(att, wvalid[a], ra)
                out = torch.where(va[:, :, None], out, out[:, :1])
                h_q[a] = out
            if b.numel():
                rb = rows[b]
                state.store("hidden", l, rb, h_f[b])
                out, q, _ = self._call(l, h_f[b], rb, None, None)
                state.store("queries", l, rb, q)
                w_index = widx[b][:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
                att = self._attention(l, q.gather(2, w_index), state.keys[l][rb], rb)
                new_track[b] = self._most_attended(att, wvalid[b], rb)
                h_f[b] = out
        # logits of window position w come from the final hidden state at w - shift
        lpos = widx - self.lm.logit_shift
        inverse = torch.zeros(n, length, dtype=torch.long, device=x.device)
        inverse.scatter_(1, idx, torch.arange(idx.shape[1], device=x.device).expand(n, -1))
        final = torch.where(
            full[:, None, None],
            h_f.gather(1, gather_d(lpos)),
            h_q.gather(1, gather_d(inverse.gather(1, lpos))),
        )
        logits = self.head(self.backbone.norm(final))
        return logits, widx, wvalid, new_track


def decode_elastic_cache(
    canvas: Canvas,
    *,
    gamma: float = _ELASTIC.gamma,
    window: int = _ELASTIC.window,
    threshold: float = _ELASTIC.threshold,
    track_num: int = _ELASTIC.track_num,
    temperature: float = _ELASTIC.temperature,
    remasking: str = _ELASTIC.remasking,
    generator: torch.Generator | None = None,
    backend: str = _ELASTIC.backend,
) -> list[list[tuple[int, int]]]:
    """Run Elastic-Cache on `canvas` (in place). Returns the refresh log: per row, (step, first
    recomputed layer) of every pass that recomputed all positions from some layer."""
    if canvas.cfg_scale > 0:
        raise ValueError("Elastic-Cache does not run with classifier-free guidance: cfg_scale=0")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    runner = _Runner(canvas.lm, canvas, gamma, track_num)
    n_layers = len(runner.layers)
    device, mask_id = canvas.device, canvas.mask_id
    generation = canvas.positions >= canvas.prompt_length
    started = torch.zeros(canvas.batch, dtype=torch.bool, device=device)
    track = torch.zeros(canvas.batch, canvas.length, dtype=torch.bool, device=device)
    fresh = torch.zeros_like(track)  # committed at the previous step
    log: list[list[tuple[int, int]]] = [[] for _ in range(canvas.batch)]
    shift = canvas.lm.logit_shift
    step = 0
    try:
        with torch.no_grad():
            while True:
                masked = (canvas.x == mask_id) & generation
                rows = (canvas.active & masked.any(1)).nonzero().flatten()
                if rows.numel() == 0:
                    return log
                step += 1
                m = masked[rows]
                win = m & (m.long().cumsum(1) <= window)
                query = track[rows] | fresh[rows] | win
                if shift:
                    query[:, :-shift] |= win[:, shift:]
                refresh_from = torch.where(started[rows], n_layers, 0)
                if gamma >= 1:
                    refresh_from.zero_()
                canvas.count(rows)
                logits, widx, wvalid, new_track = runner.forward(
                    rows, win, query, track[rows], refresh_from
                )
                for row, layer in zip(rows.tolist(), refresh_from.tolist()):
                    if layer < n_layers:
                        log[row].append((step, layer))
                x0, confidence, _ = token_confidence(
                    logits,
                    temperature=temperature,
                    remasking=remasking,
                    softmax_dtype=None,
                    generator=generator,
                    backend=backend,
                )
                # never commit [MASK]: the position would stay masked and the loop never end
                x0, confidence = never_the_mask(logits, x0, confidence, mask_id, remasking)
                chosen = threshold_rule(confidence, wvalid, threshold)
                # padding entries repeat the row's first window position: make them agree with it
                chosen = torch.where(wvalid, chosen, chosen[:, :1])
                x0 = torch.where(wvalid, x0, x0[:, :1])
                before = canvas.x[rows]
                select = torch.zeros_like(before, dtype=torch.long)
                select = select.scatter_add(1, widx, chosen.long()) > 0
                tokens = before.scatter(1, widx, torch.where(chosen, x0, before.gather(1, widx)))
                canvas.commit(rows, select, tokens, step)
                fresh[rows] = (before == mask_id) & (canvas.x[rows] != mask_id)
                track[rows] = new_track
                started[rows] = True
    finally:
        runner.close()
