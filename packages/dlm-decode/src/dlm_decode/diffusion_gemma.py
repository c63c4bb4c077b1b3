"""transformers' DiffusionGemma (`DiffusionGemmaForBlockDiffusion`, transformers >= 5.23) as a model
the masked-diffusion samplers of dlm_decode can drive.

What the model is (read in `models/diffusion_gemma/modeling_diffusion_gemma.py` and
`generation_diffusion_gemma.py` of transformers 5.23):

- Block diffusion with an encoder and a decoder that share their weights. The *encoder* reads the
  context (prompt and every finished canvas) with **causal** attention (sliding-window layers keep
  the last `sliding_window` keys) and leaves its K/V in a cache. The *decoder* denoises one canvas
  of `config.canvas_length` tokens with **bidirectional** attention inside the canvas and
  read-only attention to the encoder's K/V (sliding layers: the last `sliding_window - 1` cached
  keys, as `DynamicSlidingWindowLayer` keeps them). Over the whole sequence the attention is
  therefore block-causal: a canvas sees the clean context to its left and itself, never later
  canvases. The logits are the canvas's own (no shift: output i scores token i), soft-capped by
  `final_logit_softcapping`, in fp32.
- No [MASK] token: the noise is *uniform*. A canvas starts as uniformly random tokens; each step
  the sampler (`EntropyBoundSampler`) accepts the lowest-entropy positions whose cumulative
  entropy minus the largest stays within `entropy_bound` (the accepted ones take a token sampled
  at a linearly decaying temperature t_max -> t_min) and re-draws every other position uniformly,
  previously accepted ones included. The previous step's logits are fed back (self-conditioning).
  `StableAndConfidentStoppingCriteria` stops a canvas when its argmax has been unchanged for
  `stability_threshold` steps and the mean entropy is below `confidence_threshold`; the canvas
  kept is the last argmax.

How dlm_decode drives it (`call_style = "diffusion_gemma"`):

- The [MASK] id is a sentinel past the vocabulary (`text_config.vocab_size`): the model can never
  predict it, and masked positions are fed as uniform-noise tokens (`noise_seed`: a fixed draw per
  absolute position, so logits are a function of x; None: fresh draws at every call, as the
  released sampler re-noises).
- Canvases are the model's blocks, aligned to the end of the sequence: with gen_length a multiple of
  `canvas_length` they are exactly the generation blocks, the prompt being the first context. Use
  the samplers' `block_length = canvas_length` (or a divisor of it).
- `logits(x)` computes every canvas in one pass: the encoder over all of x (causal) and the decoder
  over all canvases with a block-causal mask; each canvas sees the encoder K/V of the positions
  before it and its own decoder K/V, exactly what the released loop computes canvas by canvas.
- Both Fast-dLLM caches are *exact* here: the context of the current canvas is causal and frozen,
  and no canvas attends to later ones, so caching the encoder K/V at the block start and feeding
  only the canvas (dual) or the canvas and what follows (prefix) gives the uncached logits.

Not reproduced: self-conditioning (every step of ours is the released sampler's first step, which
feeds zeros), the temperature schedule and the entropy-bound acceptance (ours: LLaDA's top-k
confidence schedule or Fast-dLLM's threshold; committed tokens stay), and re-noising accepted
positions. The two agree token for token where they coincide: one denoising step per canvas
(tests/test_diffusion_gemma.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlm_decode.adapters import MaskedDiffusionLM, _config_int, position_ids_from_mask
from layerwise_core.hf_cache import additive_mask

__all__ = ["block_causal_logits", "block_starts", "describe", "noise_tokens"]


class _EncoderKV:
    """The encoder's K/V per layer: a prefix (from a refresh pass) with the new positions appended.

    Speaks the two protocols of DiffusionGemma's attention: the encoder's
    `past_key_values.update(k, v, layer_idx)` and the decoder's read of
    `past_key_values.layers[i].keys / .values` (`is_compileable = False`: concatenation)."""

    is_compileable = False

    def __init__(self, num_layers: int, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.num_layers = num_layers
        self.layers = [_Layer() for _ in range(num_layers)]
        for i, (k, v) in prefix.items():
            self.layers[i].keys, self.layers[i].values = k, v

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        if layer.keys is not None:
            key_states = torch.cat([layer.keys, key_states], dim=-2)
            value_states = torch.cat([layer.values, value_states], dim=-2)
        layer.keys, layer.values = key_states, value_states
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        keys = self.layers[layer_idx].keys
        return 0 if keys is None else keys.shape[-2]


class _Layer:
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


def describe(
    model: nn.Module,
    *,
    mask_token_id: int | None = None,
    logit_shift: int | None = None,
    eos_token_id: int | None = None,
    eot_token_id: int | None = None,
) -> MaskedDiffusionLM:
    """A `DiffusionGemmaForBlockDiffusion` for the samplers: mask = sentinel `vocab_size`, no shift,
    EOS (and end of turn, when the config lists two) from `text_config.eos_token_id`."""
    if not hasattr(model, "lm_head") or not hasattr(getattr(model, "model", None), "decoder"):
        raise ValueError(
            f"{type(model).__name__} has no language-model head: load "
            "DiffusionGemmaForBlockDiffusion (AutoModel gives the head-less DiffusionGemmaModel)"
        )
    if logit_shift not in (None, 0):
        raise ValueError("DiffusionGemma's output i scores token i: logit_shift must be 0")
    text = model.config.get_text_config()
    ends = getattr(text, "eos_token_id", None)
    ends = list(ends) if isinstance(ends, (list, tuple)) else [ends]
    eos = eos_token_id if eos_token_id is not None else _config_int(text, "eos_token_id")
    eot = eot_token_id if eot_token_id is not None else (ends[1] if len(ends) > 1 else None)
    mask = mask_token_id if mask_token_id is not None else int(text.vocab_size)
    return MaskedDiffusionLM(
        model,
        int(mask),
        0,
        "diffusion_gemma",
        eos,
        eot,
        block_size=int(model.config.canvas_length),
    )


def noise_tokens(lm: MaskedDiffusionLM, length: int, device: torch.device | str) -> torch.Tensor:
    """(length,) uniform tokens that stand in for [MASK] at absolute positions 0..length-1.

    `lm.noise_seed` fixes them (the same draw for every call and batch row); None draws anew from
    torch's global RNG."""
    vocab = int(lm.model.config.get_text_config().vocab_size)
    if lm.noise_seed is None:
        return torch.randint(0, vocab, (length,), device=device)
    generator = torch.Generator().manual_seed(int(lm.noise_seed))
    return torch.randint(0, vocab, (length,), generator=generator).to(device)


def block_starts(length: int, block: int, device: torch.device | str) -> torch.Tensor:
    """(length,) start of the end-aligned block of each position: blocks [L - C, L), [L - 2C,
    L - C), ...; the leftover at the front (L mod C positions) is a short first block."""
    pos = torch.arange(length, device=device)
    offset = length % block
    return (torch.div(pos - offset, block, rounding_mode="floor") * block + offset).clamp_(min=0)


def _attention_mask(allowed: torch.Tensor, model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) mask in the form the attention implementation takes (bool for sdpa/flex-free
    paths, additive for eager)."""
    implementation = model.config.get_text_config()._attn_implementation
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return additive_mask(allowed, dtype)
    raise ValueError(
        f"DiffusionGemma under dlm_decode needs attn_implementation 'sdpa' or 'eager' (a 4-D "
        f"block-causal mask), got {implementation!r}: load with attn_implementation='sdpa'"
    )


def _layer_masks(
    model: nn.Module, allowed_full: torch.Tensor, allowed_sliding: torch.Tensor, dtype
) -> dict[str, torch.Tensor]:
    return {
        "full_attention": _attention_mask(allowed_full, model, dtype),
        "sliding_attention": _attention_mask(allowed_sliding, model, dtype),
    }


def _head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`DiffusionGemmaForBlockDiffusion.forward`'s step 2: lm_head, fp32, tanh soft-capping."""
    logits = model.lm_head(hidden).to(torch.float32)
    cap = getattr(model, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _forward(
    lm: MaskedDiffusionLM,
    x: torch.Tensor,
    key_mask: torch.Tensor | None,
    lo: int,
    hi: int,
    prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None,
) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Raw logits of canvases [lo, hi) (lo, hi: block boundaries) and the encoder K/V used.

    The encoder runs over [len(prefix), enc_hi) on top of `prefix` (K/V of [0, len(prefix))),
    where enc_hi = start of the last canvas in [lo, hi): what the canvases need as context."""
    model = lm.model
    text = model.config.get_text_config()
    batch, length = x.shape
    device = x.device
    starts = block_starts(length, int(lm.block_size), device)
    ids = x
    masked = x == lm.mask_token_id
    if bool(masked.any()):
        ids = torch.where(masked, noise_tokens(lm, length, device)[None, :], x)
    positions = (
        position_ids_from_mask(key_mask)
        if key_mask is not None
        else torch.arange(length, device=device).expand(batch, -1)
    )
    real = (
        key_mask.bool()
        if key_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )
    window = getattr(text, "sliding_window", None) or length + 1
    pos = torch.arange(length, device=device)
    dtype = model.lm_head.weight.dtype
    enc_lo = 0 if not prefix else next(iter(prefix.values()))[0].shape[-2]
    enc_hi = int(starts[hi - 1])
    cache = _EncoderKV(text.num_hidden_layers, prefix or {})
    if enc_hi > enc_lo:
        q, k = pos[enc_lo:enc_hi, None], pos[None, :enc_hi]
        causal = (k <= q)[None] & real[:, None, :enc_hi]
        causal |= (k == q)[None]  # a padding query attends to itself (no empty softmax row)
        sliding = causal & (k > q - window)[None]
        model.model.encoder.language_model(
            input_ids=ids[:, enc_lo:enc_hi],
            attention_mask=_layer_masks(model, causal[:, None], sliding[:, None], dtype),
            position_ids=positions[:, enc_lo:enc_hi],
            past_key_values=cache,
        )
    # The decoder: canvas queries [lo, hi) see the encoder keys [0, enc_hi) left of their canvas
    # (sliding layers: the last window - 1 of them) and the decoder keys of their own canvas.
    q_start = starts[lo:hi, None]
    k_enc = pos[None, :enc_hi]
    enc_full = (k_enc < q_start)[None] & real[:, None, :enc_hi]
    enc_sliding = enc_full & (k_enc >= q_start - (window - 1))[None]
    same = (starts[None, lo:hi] == q_start)[None] & real[:, None, lo:hi]
    same |= torch.eye(hi - lo, dtype=torch.bool, device=device)[None]
    full = torch.cat([enc_full, same], dim=-1)[:, None]
    sliding = torch.cat([enc_sliding, same], dim=-1)[:, None]
    hidden = model.model.decoder(
        decoder_input_ids=ids[:, lo:hi],
        past_key_values=cache,
        decoder_attention_mask=_layer_masks(model, full, sliding, dtype),
        decoder_position_ids=positions[:, lo:hi],
    ).last_hidden_state
    kv = {
        i: (layer.keys, layer.values)
        for i, layer in enumerate(cache.layers)
        if layer.keys is not None
    }
    return _head_logits(model, hidden), kv


def block_causal_logits(
    lm: MaskedDiffusionLM, x: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits (B, L, V) of every position of x: each end-aligned canvas denoised with the encoder's
    K/V of everything before it as context (masked positions fed as noise). Prompt canvases are
    computed too (their logits are never committed)."""
    logits, _ = _forward(lm, x, key_mask, 0, x.shape[1], None)
    return logits


def cached_block_logits(
    lm: MaskedDiffusionLM,
    x: torch.Tensor,
    key_mask: torch.Tensor | None,
    store: Any,
    window: tuple[int, int] | None,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    """`kv_cache.cached_logits` for DiffusionGemma: the refresh (window None) records the encoder
    K/V of x in `store.keys / store.values`; a window (start, end) reuses the K/V of the positions
    before the canvas holding `start` and returns the logits of [start, end) (exact: the context is
    causal and unchanged since the refresh, and canvases never see later ones)."""
    length = x.shape[1]
    if window is None:
        logits, kv = _forward(lm, x, key_mask, 0, length, None)
        store.keys = {i: k for i, (k, _) in kv.items()}
        store.values = {i: v for i, (_, v) in kv.items()}
        return logits
    start, end = window
    starts = block_starts(length, int(lm.block_size), x.device)
    lo = int(starts[start])
    later = (starts > starts[end - 1]).nonzero()
    hi = int(later[0]) if later.numel() else length  # end of the canvas holding end - 1
    prefix = {}
    for i, keys in store.keys.items():
        values = store.values[i]
        if rows is not None:
            keys, values = keys[rows], values[rows]
        prefix[i] = (keys[..., :lo, :], values[..., :lo, :])
    logits, _ = _forward(lm, x, key_mask, lo, hi, prefix if lo > 0 else None)
    return logits[:, start - lo : end - lo]
