"""Super-outlier removal, the intervention of the DLM-vs-AR study (arXiv 2605.06366, spec B.4),
each undone exactly when its `with` block ends.

    mode="hook"  h_{l+1}[..., c] = 0 at the output of every chosen block l (a forward hook)
    mode="rows"  W_out[c, :] = 0 (and b_out[c] = 0) in the out-projections that write the residual
                 stream of every chosen block: attention o_proj and MLP down_proj (LLaDA: attn_out,
                 ff_out); the saved rows are copied back on exit, bit for bit

"hook" removes the channel from the stream itself (including what the embeddings and earlier
blocks put there); "rows" only stops the chosen blocks from writing it. Block skipping is
`skip_layers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from layerwise_core import LayerMap, find_decoder

__all__ = ["out_projections", "zero_outlier_channel"]

_ATTN_OUT = ("o_proj", "out_proj", "attn_out", "dense", "c_proj", "wo")
_MLP_OUT = ("down_proj", "ff_out", "dense_4h_to_h", "c_proj", "fc2", "w2")


def _writer(contribution: nn.Module | None, sublayer: nn.Module | None, names) -> nn.Linear | None:
    for module in (contribution, sublayer):
        if isinstance(module, nn.Linear):
            return module
        if module is None:
            continue
        for name in names:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                return child
    return None


def out_projections(layer: LayerMap) -> list[nn.Linear]:
    """The linears whose output rows write block `layer`'s residual stream: the attention output
    projection and the MLP down projection (ValueError naming the fix when one is not found)."""
    found = []
    parts = (
        ("attention", layer.attn_contribution, layer.attn, _ATTN_OUT),
        ("MLP", layer.mlp_contribution, layer.mlp, _MLP_OUT),
    )
    for what, contribution, sublayer, names in parts:
        if contribution is None and sublayer is None:
            continue
        writer = _writer(contribution, sublayer, names)
        if writer is None:
            raise ValueError(
                f"zero_outlier_channel: no nn.Linear {what} output projection named one of {names} "
                f"in block {layer.index} (MoE experts or Conv1D?); use mode='hook'"
            )
        found.append(writer)
    return found


def _layers(num: int, layers: Sequence[int] | None) -> list[int]:
    chosen = list(range(num)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < num]
    if bad:
        raise ValueError(f"zero_outlier_channel: layers {bad} out of range for {num} blocks")
    return chosen


@contextlib.contextmanager
def zero_outlier_channel(
    model: nn.Module,
    channels: int | Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    mode: Literal["hook", "rows"] = "hook",
) -> Iterator[nn.Module]:
    """Within the `with` block, hidden channel(s) `channels` (e.g. the super-outlier c*) are removed
    at blocks `layers` (default: all; the study: where c* qualifies) by `mode` (module docstring).
    On exit the hooks are removed / the zeroed weight rows restored bit for bit."""
    chosen_channels = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if mode not in ("hook", "rows"):
        raise ValueError(f"zero_outlier_channel: mode must be 'hook' or 'rows', got {mode!r}")
    dmap = find_decoder(model)
    chosen = _layers(len(dmap), layers)
    hidden = getattr(dmap.embed_tokens, "embedding_dim", None)
    if hidden is not None and any(not 0 <= c < hidden for c in chosen_channels):
        raise ValueError(
            f"zero_outlier_channel: channels {chosen_channels} out of range for hidden size {hidden}"
        )
    handles = []
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if mode == "hook":

            def zero_output(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                hidden = hidden.clone()
                hidden[..., chosen_channels] = 0
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            for i in chosen:
                handles.append(dmap[i].block.register_forward_hook(zero_output))
        else:
            writers = [w for i in chosen for w in out_projections(dmap[i])]
            with torch.no_grad():
                for writer in dict.fromkeys(writers):  # a shared module is zeroed once
                    for param in (writer.weight, writer.bias):
                        if param is None:
                            continue
                        saved.append((param, param[chosen_channels].clone()))
                        param[chosen_channels] = 0
        yield model
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for param, rows in reversed(saved):
                param[chosen_channels] = rows
