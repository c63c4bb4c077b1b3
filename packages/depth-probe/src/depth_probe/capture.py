"""One forward pass that every depth metric reads from.

`capture_depth(model, input_ids)` runs the model once with forward hooks (core's
`capture_residual_stream`) and keeps, for blocks l = 0..L-1::

    h_l          residual stream entering block l (h_L = last block output, BEFORE the final norm)
    a_l, m_l     what attention and the MLP add to the stream
    x_l          the attention input (the QKV input: N_attn(h_l), or h_l for post-norm blocks)
    Norm_f(h_L)  and the logits, for the logit lens

plus which positions are real tokens. Every metric of this package accepts either a model (and then
captures) or a `DepthCapture`, so `probe()` computes all of them from a single forward. Token ids
are a (batch, seq) tensor with `attention_mask=...`, or a batch mapping with "input_ids" (and
"attention_mask"), e.g. a tokenizer's output (`layerwise_core.token_inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from layerwise_core import (
    DecoderMap,
    ResidualStream,
    TokenInputs,
    capture_residual_stream,
    find_decoder,
    token_inputs,
)

__all__ = ["DepthCapture", "as_capture", "capture_depth", "logit_shift_of", "token_mask"]


def logit_shift_of(model: nn.Module | None) -> int:
    """Which token the output at position i scores: i + 1 for causal LMs, `config.logit_shift` for
    masked-diffusion LMs (0 for LLaDA-like models: position i scores token i)."""
    shift = getattr(getattr(model, "config", None), "logit_shift", None)
    return 1 if shift is None else int(shift)


def token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [batch, seq] mask of real (non-padding) positions from a 2-D attention mask."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.ones(input_ids.shape[:2], dtype=torch.bool, device=input_ids.device)
    return attention_mask.bool()


@dataclass
class DepthCapture:
    """The residual stream of one forward pass, with what the depth metrics need around it."""

    stream: ResidualStream
    mask: torch.Tensor  # [batch, seq] bool: real tokens
    input_ids: torch.Tensor | None = None
    attn_inputs: list[torch.Tensor] | None = None  # x_l, the QKV input of block l
    decoder_map: DecoderMap | None = None  # final norm + head for the logit lens
    logit_shift: int = 1

    @property
    def num_layers(self) -> int:
        return self.stream.num_layers

    @property
    def hidden_states(self) -> list[torch.Tensor]:
        """h_0 .. h_L, all before the final norm ([batch, seq, hidden] each)."""
        return list(self.stream.hidden_states)

    def real_tokens(self, tensor: torch.Tensor) -> torch.Tensor:
        """[batch, seq, ...] -> [n_real_tokens, ...]: padding positions dropped."""
        return tensor[self.mask.to(tensor.device)]

    def last_positions(self) -> torch.Tensor:
        """Index of each row's last real token (left and right padding both work)."""
        positions = torch.arange(self.mask.shape[1], device=self.mask.device)
        return torch.where(self.mask, positions, -1).amax(dim=1).clamp_min(0)

    def zero_channels(self, channels: Sequence[int] | None) -> DepthCapture:
        """A copy whose residual-stream tensors have `channels` set to 0 (for similarity metrics
        only: the forward pass itself is unchanged, as in the super-outlier study)."""
        if not channels:
            return self
        idx = list(channels)

        def zeroed(values):
            out = []
            for value in values:
                if value is None:
                    out.append(None)
                    continue
                value = value.clone()
                value[..., idx] = 0
                out.append(value)
            return out

        stream = replace(
            self.stream,
            inputs=zeroed(self.stream.inputs),
            attn_outputs=zeroed(self.stream.attn_outputs),
            mlp_outputs=zeroed(self.stream.mlp_outputs),
            outputs=zeroed(self.stream.outputs),
        )
        attn_inputs = None if self.attn_inputs is None else zeroed(self.attn_inputs)
        return replace(self, stream=stream, attn_inputs=attn_inputs)


def _attention_input_hooks(dmap: DecoderMap, store: list[torch.Tensor | None]):
    """Forward hooks recording the QKV input of every block: the output of its pre-attention
    norm, or the block input itself where there is no such norm (post-norm blocks)."""
    handles = []
    for layer in dmap:
        index = layer.index
        if layer.attn_norm is not None:

            def after_norm(module, args, output, index=index):
                store[index] = (output[0] if isinstance(output, tuple) else output).detach()

            handles.append(layer.attn_norm.register_forward_hook(after_norm))
        else:

            def block_input(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
                store[index] = hidden.detach()

            handles.append(layer.block.register_forward_pre_hook(block_input, with_kwargs=True))
    return handles


def capture_depth(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    attn_inputs: bool = True,
    logits: bool = True,
    decoder_map: DecoderMap | None = None,
    **forward_kwargs: Any,
) -> DepthCapture:
    """Run `model` ONCE and record everything the depth metrics need (see the module docstring).

    Args:
        attention_mask: 2-D [batch, seq] (1 = real token); padding is left out of every average.
        attn_inputs: also record the QKV input of each block (for `massive_activations`).
        logits: run the final norm and head (needed by `logit_lens`); False stops after the last block.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="capture_depth")
    if input_ids is None:
        raise ValueError("capture_depth: input_ids is required")
    dmap = decoder_map or find_decoder(model)
    store: list[torch.Tensor | None] = [None] * len(dmap)
    handles = _attention_input_hooks(dmap, store) if attn_inputs else []
    try:
        stream = capture_residual_stream(
            model,
            input_ids,
            attention_mask,
            logits=logits,
            decoder_map=dmap,
            **forward_kwargs,
        )
    finally:
        for handle in handles:
            handle.remove()
    return DepthCapture(
        stream=stream,
        mask=token_mask(input_ids, attention_mask),
        input_ids=input_ids,
        attn_inputs=list(store) if attn_inputs else None,  # type: ignore[arg-type]
        decoder_map=dmap,
        logit_shift=logit_shift_of(model),
    )


def as_capture(
    source: nn.Module | DepthCapture | ResidualStream,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    what: str = "this metric",
) -> DepthCapture:
    """A `DepthCapture` from a model (one forward on `input_ids`), a capture, or a core stream."""
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what=what)
    if isinstance(source, DepthCapture):
        return source
    if isinstance(source, ResidualStream):
        if source.positions != "all":
            raise ValueError(
                f"{what}: needs a stream captured with positions='all'; got {source.positions!r}"
            )
        first = next(t for t in source.inputs if t is not None)
        if attention_mask is not None:
            mask = attention_mask.bool()
        else:
            mask = torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
        return DepthCapture(stream=source, mask=mask, input_ids=input_ids)
    if isinstance(source, nn.Module):
        if input_ids is None:
            raise ValueError(f"{what}: pass input_ids with the model, e.g. {what}(model, ids)")
        return capture_depth(source, input_ids, attention_mask)
    raise TypeError(
        f"{what}: expected a model, a DepthCapture or a ResidualStream, got {type(source).__name__}"
    )
