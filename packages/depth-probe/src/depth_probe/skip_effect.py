"""Skip effect on future computation (Csordas et al., "Do Language Models Use Their Depth
Efficiently?", arXiv 2505.13898, Sec. 3).

Skip block s for the tokens before position t only (its output replaced by its input there), and
measure how much the computation of the tokens at positions >= t changes. With D_l = h_{l+1} - h_l
the contribution of block l, and primes for the intervened run::

    effect[s, l]  = max_{tokens >= t} ||D_l - D'_l|| / ||D_l||
    output[s]     = max_{tokens >= t} ||p - p'||_2          (p: output probabilities)

A block whose skip changes nothing downstream builds no features that later tokens use. Like the
paper we never skip the first `no_skip_front` tokens (the BOS/attention-sink token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from layerwise_core import TokenInputs, capture_residual_stream, find_decoder, token_inputs

__all__ = ["SkipEffect", "skip_effect", "skip_layer_before"]


@dataclass
class SkipEffect:
    relative_change: torch.Tensor  # [L skipped, L affected]; max over tokens >= t and over t
    output_change: torch.Tensor  # [L skipped]: max ||p - p'||_2 over tokens >= t and over t
    positions: list[int]

    def as_dict(self) -> dict:
        return {
            "relative_change": self.relative_change.tolist(),
            "output_change": self.output_change.tolist(),
            "positions": self.positions,
        }


def _contributions(model, input_ids, attention_mask, dmap):
    stream = capture_residual_stream(
        model, input_ids, attention_mask, kinds=("inputs", "outputs"), decoder_map=dmap
    )
    hidden = torch.stack([h.float() for h in stream.hidden_states])
    return hidden[1:] - hidden[:-1], stream.logits.float().softmax(-1)


@contextlib.contextmanager
def skip_layer_before(
    model: nn.Module, layer: int, position: int, *, no_skip_front: int = 1
) -> Iterator[nn.Module]:
    """Within the block, block `layer` is the identity for tokens no_skip_front .. position-1
    (its output replaced by its input there) and unchanged for the other tokens."""
    dmap = find_decoder(model)

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        pos = torch.arange(hidden.shape[1], device=hidden.device)
        replace = ((pos >= no_skip_front) & (pos < position))[None, :, None]
        if isinstance(output, tuple):
            return (torch.where(replace, hidden, output[0]), *output[1:])
        return torch.where(replace, hidden, output)

    handle = dmap[layer].block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


def skip_effect(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    positions: Sequence[int] | None = None,
    no_skip_front: int = 1,
    layers: Sequence[int] | None = None,
) -> SkipEffect:
    """Csordas et al.'s skip effect for every skipped block s (or `layers`) and position t.

    Args:
        positions: the split points t (default: the middle of the sequence); results are the max
            over them, as in the paper.
        no_skip_front: the first positions are never skipped (the attention sink).
        layers: which blocks to skip (default: all). Costs 1 + len(layers) * len(positions) forwards.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="skip_effect")
    dmap = find_decoder(model)
    num = len(dmap)
    length = input_ids.shape[1]
    positions = [length // 2] if positions is None else [int(t) for t in positions]
    if any(not 0 <= t < length for t in positions):
        raise ValueError(f"skip_effect: positions {positions} out of range for length {length}")
    skipped = list(range(num)) if layers is None else [int(s) for s in layers]
    valid = (
        torch.ones(input_ids.shape, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool()
    ).to(input_ids.device)

    base_d, base_p = _contributions(model, input_ids, attention_mask, dmap)
    relative = torch.zeros(num, num)
    output = torch.zeros(num)
    for t in positions:
        future = valid.clone()
        future[:, :t] = False
        for s in skipped:
            with skip_layer_before(model, s, t, no_skip_front=no_skip_front):
                new_d, new_p = _contributions(model, input_ids, attention_mask, dmap)
            change = (base_d - new_d).norm(dim=-1) / base_d.norm(dim=-1).clamp_min(1e-6)
            if future.any():
                relative[s] = torch.maximum(relative[s], change[:, future].amax(-1).cpu())
                out = (base_p - new_p).norm(dim=-1)[future].amax().cpu()
                output[s] = torch.maximum(output[s], out)
    return SkipEffect(relative_change=relative, output_change=output, positions=positions)
