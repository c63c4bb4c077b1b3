"""Per-layer output variance of the decoder blocks, logged during training (spec studies.md A.3.1).

    v_l = mean_{b,t} Var_c(h_{l+1}[b, t, :])     (unbiased over the d channels)

where h_{l+1} is the output of decoder block l (the residual stream BEFORE the final norm),
read by `depth_probe.LayerVarianceMonitor`'s forward hooks on the blocks (never from
`output_hidden_states`, whose last entry is post-final-norm); the same for the attention and
MLP updates a_l, m_l. `train.log_layer_variance_every: N` adds `layer_variance/<l>` for every
block, `layer_variance/last`, `attn_variance/<l>` and `mlp_variance/<l>` to the train record of
every N-th step, measured on the step's own training forward passes (no extra forward):
token-weighted over its micro-batches and over processes (one all-reduce).

The hooks only read: the training forward, its loss and gradients are unchanged (tested). With
activation checkpointing a block's forward runs again in the backward; the monitor records the
forward only, so the recomputation is not counted twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from layerwise_core import UsageError, all_reduce_sum

__all__ = ["TrainingVarianceLog"]


class TrainingVarianceLog:
    """`depth_probe.LayerVarianceMonitor` on a training model, read into train-record keys.

    log = TrainingVarianceLog(model)
    with log.armed():              # each forward pass of one optimizer step
        loss = model(...)
    record |= log.record()         # {"layer_variance/0": ..., "layer_variance/last": ...}
    log.close()                    # hooks removed
    """

    def __init__(self, model: nn.Module) -> None:
        from depth_probe import LayerVarianceMonitor

        if callable(getattr(model, "decoder_layers", None)):  # PretrainConfig refuses it first
            raise UsageError(
                f"train.log_layer_variance_every reads one stack of decoder blocks, and "
                f"{type(model).__name__} has a backbone and several heads: set "
                "train.log_layer_variance_every=0"
            )
        self.monitor = LayerVarianceMonitor(model)
        self._armed = 0

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """The forward passes inside are measured."""
        with self.monitor.record():
            self._armed += 1
            yield

    def record(self) -> dict[str, float]:
        """Means since the last call over the armed forwards (token-weighted) and the processes;
        resets. Empty if nothing was armed."""
        if not self._armed:
            return {}
        self._armed = 0
        stats = self.monitor.read()
        tokens = float(stats.tokens)
        sums = torch.cat(
            [
                stats.output_var * tokens,
                stats.attn_var * tokens,
                stats.mlp_var * tokens,
                torch.tensor([tokens], dtype=torch.float64),
            ]
        )
        device = next(iter(self.monitor.model.parameters())).device
        totals = all_reduce_sum(sums.to(device)).cpu()
        means = (totals[:-1] / totals[-1]).view(3, -1).tolist()
        out = {}
        for key, values in zip(("layer_variance", "attn_variance", "mlp_variance"), means):
            out |= {f"{key}/{index}": value for index, value in enumerate(values)}
        out["layer_variance/last"] = means[0][-1]
        return out

    def close(self) -> None:
        """Remove the hooks."""
        self.monitor.remove()
