"""Capture the residual stream of a decoder in ONE forward pass, with forward hooks.

For block l (0-based) of a pre-norm decoder::

    inputs[l]       = h_l                       (residual stream entering block l)
    attn_outputs[l] = a_l = Attn(N_attn(h_l))   (what attention adds to the stream)
    mlp_outputs[l]  = m_l = MLP(N_mlp(h_l + a_l))
    outputs[l]      = h_{l+1} = h_l + a_l + m_l (block output, BEFORE the final norm)

The final-norm trap: HF `output_hidden_states[-1]` is taken AFTER the final norm, so comparing it
with `hidden_states[-2]` mixes a normed and an un-normed vector. Hooks on the blocks avoid that:
`outputs[-1]` is the un-normed stream, and `final_norm_output` is what the head actually sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from layerwise_core.decoder_map import DecoderMap, find_decoder
from layerwise_core.token_inputs import TokenInputs, token_inputs

__all__ = ["ResidualStream", "capture_residual_stream"]

Kind = Literal["inputs", "attn_outputs", "mlp_outputs", "outputs"]
ALL_KINDS: tuple[Kind, ...] = ("inputs", "attn_outputs", "mlp_outputs", "outputs")


@dataclass
class ResidualStream:
    """Per-layer captures (lists indexed by layer; None where a layer or kind was not captured)."""

    inputs: list[torch.Tensor | None]
    attn_outputs: list[torch.Tensor | None]
    mlp_outputs: list[torch.Tensor | None]
    outputs: list[torch.Tensor | None]
    logits: torch.Tensor | None = None
    final_norm_output: torch.Tensor | None = None
    positions: str = "all"
    layers: list[int] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.inputs)

    @property
    def hidden_states(self) -> list[torch.Tensor | None]:
        """h_0 .. h_L: every block input plus the last block output, all before the final norm."""
        return [*self.inputs, self.outputs[-1]]

    def stack(self, kind: Kind = "inputs") -> torch.Tensor:
        """Captured tensors of one kind stacked along a new leading layer dimension."""
        values = [t for t in getattr(self, kind) if t is not None]
        if not values:
            raise ValueError(f"ResidualStream.stack: nothing captured for {kind!r}")
        return torch.stack(values)


class _StopForward(Exception):
    """Raised by the last hook when logits are not wanted: skips the final norm and the LM head."""


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    for name in ("last_hidden_state", "hidden_states"):
        if hasattr(output, name):
            return getattr(output, name)
    raise TypeError(
        f"capture_residual_stream: cannot find a tensor in a {type(output).__name__} output"
    )


def _last_positions(
    attention_mask: torch.Tensor | None, length: int, batch: int, device: torch.device
) -> torch.Tensor:
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.full((batch,), length - 1, device=device, dtype=torch.long)
    positions = torch.arange(length, device=device).expand(batch, length)
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1).clamp_min(0)


def capture_residual_stream(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    positions: Literal["all", "last"] = "all",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layers: Iterable[int] | None = None,
    kinds: Sequence[Kind] = ALL_KINDS,
    logits: bool = True,
    grad: bool = False,
    decoder_map: DecoderMap | None = None,
    **forward_kwargs: Any,
) -> ResidualStream:
    """Run `model(input_ids, attention_mask)` once and record the residual stream of every block.

    Args:
        input_ids: token ids (batch, seq), or a batch mapping with "input_ids" (and
            "attention_mask"); see `layerwise_core.token_inputs`.
        positions: "all" keeps [batch, seq, hidden]; "last" keeps only each row's last real token
            ([batch, hidden]; the last position where `attention_mask` is 1, so left and right
            padding both work).
        reduce: applied to each captured tensor on the fly (after position selection), e.g.
            `lambda h: h.float().var(-1)`, so long sequences need not be held in memory.
        layers: indices of blocks to record (default all).
        kinds: which of inputs / attn_outputs / mlp_outputs / outputs to record.
        logits: False stops the forward after the last block (no final norm, no LM head).
        grad: keep the autograd graph (default: no_grad, captures detached).
    """
    input_ids, attention_mask = token_inputs(
        input_ids, attention_mask, what="capture_residual_stream"
    )
    if input_ids is None:
        raise ValueError("capture_residual_stream: input_ids is required")
    dmap = decoder_map or find_decoder(model)
    num = len(dmap)
    wanted = sorted(set(range(num) if layers is None else layers))
    if any(i < 0 or i >= num for i in wanted):
        raise ValueError(f"capture_residual_stream: layers {wanted} out of range for {num} blocks")
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(
            f"capture_residual_stream: unknown kinds {sorted(unknown)}; use {ALL_KINDS}"
        )

    batch, length = input_ids.shape[0], input_ids.shape[1]
    last = (
        _last_positions(attention_mask, length, batch, input_ids.device)
        if positions == "last"
        else None
    )
    if positions not in ("all", "last"):
        raise ValueError(
            f"capture_residual_stream: positions must be 'all' or 'last', got {positions!r}"
        )

    store: dict[str, list[torch.Tensor | None]] = {k: [None] * num for k in ALL_KINDS}
    final: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if last is not None:
            tensor = tensor[
                torch.arange(tensor.shape[0], device=tensor.device), last.to(tensor.device)
            ]
        if reduce is not None:
            tensor = reduce(tensor)
        return tensor if grad else tensor.detach()

    handles = []
    stop_layer = wanted[-1] if (not logits and wanted) else None

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            store["inputs"][index] = keep(hidden)

        return hook

    def post_hook(kind, index):
        def hook(module, args, output):
            store[kind][index] = keep(_first(output))
            if kind == "outputs" and index == stop_layer:
                raise _StopForward

        return hook

    try:
        for i in wanted:
            layer = dmap[i]
            if "inputs" in kinds:
                handles.append(layer.block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            if "attn_outputs" in kinds and layer.attn_contribution is not None:
                handles.append(
                    layer.attn_contribution.register_forward_hook(post_hook("attn_outputs", i))
                )
            if "mlp_outputs" in kinds:
                handles.append(
                    layer.mlp_contribution.register_forward_hook(post_hook("mlp_outputs", i))
                )
            if "outputs" in kinds or i == stop_layer:
                handles.append(layer.block.register_forward_hook(post_hook("outputs", i)))
        if logits and dmap.final_norm is not None:
            handles.append(
                dmap.final_norm.register_forward_hook(
                    lambda m, a, out: final.__setitem__("norm", keep(_first(out)))
                )
            )
        out_logits = None
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            try:
                kwargs = dict(forward_kwargs)
                if attention_mask is not None:
                    kwargs["attention_mask"] = attention_mask
                result = model(input_ids, **kwargs)
                out_logits = getattr(result, "logits", None)
                if out_logits is not None and last is not None:
                    out_logits = out_logits[torch.arange(batch, device=out_logits.device), last]
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()

    if "outputs" not in kinds:
        store["outputs"] = [None] * num
    return ResidualStream(
        inputs=store["inputs"],
        attn_outputs=store["attn_outputs"],
        mlp_outputs=store["mlp_outputs"],
        outputs=store["outputs"],
        logits=None if out_logits is None else (out_logits if grad else out_logits.detach()),
        final_norm_output=final.get("norm"),
        positions=positions,
        layers=wanted,
    )
