"""Fast-dLLM's approximate KV caches for block-wise decoding: prefix cache and dual cache.

Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and
Parallel Decoding", arXiv:2505.22618; reference code NVlabs/Fast-dLLM `llada/generate.py`.

Attention is bidirectional, so no key/value is exact once any token changes; Fast-dLLM observes
that K/V barely move within a block and reuses them:

- At the start of every block a full forward *refreshes* every layer's K/V (and its logits
  already commit the block's first step).
- Prefix cache: the next steps feed x[start:] (current block and everything after it) and attend
  to the cached K/V of x[:start].
- Dual cache: the next steps feed only x[start:end] and attend to the cached K/V of the prefix
  *and* of the suffix x[end:], which stay frozen until the next block.

`BlockKVCache` implements both with the transformers cache protocol (`update(k, v, layer_idx, ...)`,
as `transformers.Cache.update`), so any transformers decoder that takes a 4-D attention mask and a
cache works (Llama, Qwen2, the bidirectional test models of layerwise_core). The cache is handed
over under the name the backbone's `forward` takes (`cache` from transformers 5.25,
`past_key_values` before). Keys are cached after RoPE with their absolute
positions, which is the same as Fast-dLLM's pre-RoPE cache re-rotated each step, since a window
keeps its positions.

For a Dream-style model (`logit_shift = 1`) the logits of the block's first position come from
the hidden state one to its left; the window therefore starts one position earlier (ours: the
Fast-dLLM Dream code instead commits that position from the refresh pass unconditionally).

Native LLaDA/Dream (`dlm_decode.models`) have Llama/Qwen2-style backbones and take this path as
they are. DiffusionGemma (block-causal: a causal encoder for the context, a bidirectional decoder
per canvas) takes `dlm_decode.diffusion_gemma.cached_block_logits`: there both caches are exact,
since the context of a canvas is causal and frozen during the block and no canvas attends to a
later one (dual cache == prefix cache == no cache, token for token).
"""

from __future__ import annotations

import torch

from dlm_decode.adapters import (
    MaskedDiffusionLM,
    align_logits,
    is_native,
    position_ids_from_mask,
)
from layerwise_core.hf_cache import additive_mask, cache_keyword

__all__ = ["BlockKVCache", "cached_logits"]


class BlockKVCache:
    """Per-layer K/V of a refresh pass, spliced around the K/V of a window at each later step."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.recording = True
        self.window_start = 0
        self.rows: torch.Tensor | None = None  # rows of the refresh batch the window pass feeds

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V that layer `layer_idx` attends to: the refresh's, with the window's spliced in.

        Same protocol as `transformers.Cache.update`: whatever else the attention module passes
        (a `cache_kwargs` dict with RoPE sin/cos and `cache_position` up to transformers 5.23,
        `kwargs=` from 5.25) is accepted and not needed, since positions are explicit here.
        """
        if self.recording:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
            return key_states, value_states
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.rows is not None:
            keys, values = keys[self.rows], values[self.rows]
        lo, hi = self.window_start, self.window_start + key_states.shape[-2]
        keys = torch.cat([keys[..., :lo, :], key_states, keys[..., hi:, :]], dim=-2)
        values = torch.cat([values[..., :lo, :], value_states, values[..., hi:, :]], dim=-2)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """0: transformers asks it to derive positions, which `cached_logits` always passes."""
        return 0


def _adds_mask_to_scores(model) -> bool:
    """A transformers backbone in eager attention adds a 4-D mask to the scores as it is, so it
    needs 0 / dtype-min rather than a bool mask (SDPA takes either; the native LLaDA / Dream
    classes convert their own)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == "eager" and not is_native(model)


def _check(lm: MaskedDiffusionLM) -> None:
    if not lm.supports_kv_cache and lm.call_style != "diffusion_gemma":
        raise ValueError(
            f"KV caches need a transformers decoder (get_decoder/get_output_embeddings) that takes "
            f"a cache and a 4-D mask; this model ({type(lm.model).__name__}, call style "
            f"{lm.call_style!r}) does not: pass cache=None (Fast-dLLM's caches for LLaDA/Dream "
            "need their patched modeling files)"
        )


def cached_logits(
    lm: MaskedDiffusionLM,
    x: torch.Tensor,
    key_mask: torch.Tensor | None,
    cache: BlockKVCache,
    *,
    window: tuple[int, int] | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Aligned logits through the backbone with `cache`.

    window=None: the refresh pass over all of x (B, L); records K/V; returns (B, L, V).
    window=(start, end): only positions [start, end) are fed (x is the full canvas of the rows
    `rows` of the refresh batch); returns aligned logits of positions [start, end), (R, end-start, V).
    """
    _check(lm)
    if lm.call_style == "diffusion_gemma":
        from dlm_decode.diffusion_gemma import cached_block_logits

        return cached_block_logits(lm, x, key_mask, cache, window, rows)
    batch, length = x.shape
    positions = (
        position_ids_from_mask(key_mask)
        if key_mask is not None
        else torch.arange(length, device=x.device).expand(batch, -1)
    )
    keys = (
        key_mask.bool()
        if key_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=x.device)
    )
    shift = lm.logit_shift
    if window is None:
        cache.recording, cache.rows, cache.window_start = True, None, 0
        lo, hi = 0, length
    else:
        start, end = window
        cache.recording, cache.rows = False, rows
        lo, hi = start - shift, end
        if lo < 0:
            raise ValueError("a cached window cannot start at position 0 of a shifted model")
        cache.window_start = lo
    query = hi - lo
    mask4d = keys[:, None, None, :].expand(batch, 1, query, length)
    backbone = lm.model.get_decoder()
    if _adds_mask_to_scores(lm.model):
        mask4d = additive_mask(mask4d, lm.model.get_output_embeddings().weight.dtype)
    hidden = backbone(
        input_ids=x[:, lo:hi],
        attention_mask=mask4d,
        position_ids=positions[:, lo:hi],
        use_cache=True,
        **{cache_keyword(backbone.forward): cache},
    ).last_hidden_state
    raw = lm.model.get_output_embeddings()(hidden)
    if window is None:
        return align_logits(raw, shift)
    return raw[:, : end - start] if shift else raw
