"""Per-layer output variance of the decoder blocks, logged during training (spec studies.md A.3.1).

    v_l = mean_{b,t} Var_c(h_{l+1}[b, t, :])     (unbiased over the d channels)

where h_{l+1} is the output of decoder block l (the residual stream BEFORE the final norm: read
by a forward hook on the block, never from `output_hidden_states`, whose last entry is
post-final-norm). `train.log_layer_variance_every: N` adds `layer_variance/<l>` for every block
and `layer_variance/last` to the train record of every N-th step, measured on the step's own
training forward passes (no extra forward): the mean over its micro-batches, then over processes.

The hooks only read: the training forward, its loss and gradients are unchanged (tested). With
activation checkpointing a block's forward runs again in the backward; the monitor is armed for
the forward only, so the recomputation is not counted twice.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from layerwise_core import all_reduce_sum, find_decoder

__all__ = ["LayerVarianceMonitor", "block_output_variance"]


def block_output_variance(hidden: torch.Tensor) -> torch.Tensor:
    """v = mean over every position of the unbiased variance over the last (channel) dimension of
    `hidden` [..., d], in fp32 at least (a 0-d tensor, no host sync)."""
    x = hidden.detach()
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x.var(dim=-1, correction=1).mean()


class LayerVarianceMonitor:
    """Forward hooks on the decoder blocks of `model` that accumulate `block_output_variance` of
    each block's output while armed.

        monitor = LayerVarianceMonitor(model)
        with monitor.armed():          # the forward passes of one optimizer step
            loss = model(...)          # each armed forward adds one v_l per block
        record |= monitor.record()     # {"layer_variance/0": ..., "layer_variance/last": ...}

    `record()` returns the mean over the armed forwards (and over processes, by an all-reduce)
    and resets the sums; `close()` removes the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = list(find_decoder(model).layers)
        self._armed = False
        self._sums: list[torch.Tensor | None] = [None] * len(self.layers)
        self._count = 0
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._hook(index))
            for index, layer in enumerate(self.layers)
        ]

    def _hook(self, index: int):
        def hook(module: nn.Module, args, output) -> None:
            if not self._armed:
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            with torch.no_grad():
                value = block_output_variance(hidden).double()
            current = self._sums[index]
            self._sums[index] = value if current is None else current + value

        return hook

    class _Armed:
        def __init__(self, monitor: LayerVarianceMonitor) -> None:
            self.monitor = monitor

        def __enter__(self) -> None:
            self.monitor._armed = True

        def __exit__(self, *exc) -> None:
            self.monitor._armed = False
            self.monitor._count += 1

    def armed(self) -> LayerVarianceMonitor._Armed:
        """A context in which one forward pass is measured (count one per `with`)."""
        return self._Armed(self)

    def record(self) -> dict[str, float]:
        """`{"layer_variance/<l>": v_l, ..., "layer_variance/last": v_{L-1}}`, the mean over the
        armed forwards since the last call and over processes; resets. Empty if none ran."""
        if self._count == 0 or any(s is None for s in self._sums):
            self._reset()
            return {}
        sums = torch.stack(self._sums)
        counts = torch.full((), float(self._count), dtype=torch.float64, device=sums.device)
        totals = all_reduce_sum(torch.cat([sums, counts[None]])).cpu()
        means = (totals[:-1] / totals[-1]).tolist()
        self._reset()
        out = {f"layer_variance/{index}": value for index, value in enumerate(means)}
        out["layer_variance/last"] = means[-1]
        return out

    def _reset(self) -> None:
        self._sums = [None] * len(self.layers)
        self._count = 0

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
